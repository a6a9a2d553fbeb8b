"""The dashboard's KPIs and filters: one list shared by the HTML page and the Lakeview definition.

Each KPI id is the ``data-kpi`` attribute of its element on the HTML page and the ``name`` of its
widget in the Lakeview dashboard, so a test can check that both show the same set.
"""

from __future__ import annotations

from dataclasses import dataclass

from fitbit_stream.transforms.demographics import AGE_BINS, INVALID_AGE

__all__ = ["AGE_ORDER", "CHARTS", "FILTERS", "KPIS", "TILES", "UNKNOWN", "Filter", "Kpi"]

#: The label of a NULL demographic value (no profile, no version in effect, a mac nobody owns).
UNKNOWN = "(unknown)"

#: Display order of the age groups.
AGE_ORDER: tuple[str, ...] = (*(label for _, label in AGE_BINS), INVALID_AGE, UNKNOWN)


@dataclass(frozen=True)
class Kpi:
    id: str
    title: str
    #: The dataset (dashboard.datasets.DATASETS) it is computed from.
    dataset: str
    #: One line on how the number is aggregated, shown under the chart.
    note: str


TILES: tuple[Kpi, ...] = (
    Kpi("total_workouts", "Workouts", "workouts", "completed sessions with heart-rate readings"),
    Kpi("total_visits", "Gym logins", "visits", "closed gym visits"),
    Kpi("total_members", "Members", "members", "registered members and members with a profile"),
    Kpi("minutes_in_gym", "Time in gym", "visits", "sum over visits, hours:minutes"),
    Kpi(
        "minutes_exercising",
        "Time exercising",
        "visits",
        "sum over visits of sessions started in the gym, hours:minutes",
    ),
    Kpi("avg_bpm", "Average bpm", "workouts", "mean of the workouts' average heart rate"),
)

CHARTS: tuple[Kpi, ...] = (
    Kpi(
        "daily_trend",
        "Daily trend",
        "workouts",
        "per UTC day: completed workouts and their mean average bpm (workouts), time in gym and time "
        "exercising (visits)",
    ),
    Kpi(
        "hr_by_group",
        "Heart rate per workout by age group and gender",
        "workouts",
        "lowest min_bpm, mean avg_bpm (each workout once) and highest max_bpm of the group's workouts; "
        "demographics as of the workout",
    ),
    Kpi(
        "gym_vs_exercise",
        "Time in gym vs time exercising per member",
        "visits",
        "sums over the member's closed visits, hours:minutes",
    ),
    Kpi(
        "logins_vs_hours",
        "Gym logins vs workout hours per member",
        "visits",
        "logins = closed visits, workout hours = minutes exercising / 60",
    ),
    Kpi(
        "workout_share",
        "Share of workout time per member",
        "visits",
        "member's minutes exercising / all members' minutes exercising",
    ),
    Kpi(
        "occupancy_heatmap",
        "Hourly occupancy per gym",
        "occupancy",
        "average occupancy of each UTC hour (visitors and peak in the tooltip); follows the date range only",
    ),
    Kpi("age_distribution", "Members by age group", "members", "current profile"),
    Kpi("gender_distribution", "Members by gender", "members", "current profile"),
    Kpi("city_distribution", "Members by city", "members", "current profile"),
)

KPIS: tuple[Kpi, ...] = (*TILES, *CHARTS)


@dataclass(frozen=True)
class Filter:
    id: str
    title: str
    #: The dataset column it filters on.
    column: str
    #: The datasets that carry the column (and so follow the filter).
    datasets: tuple[str, ...]


FILTERS: tuple[Filter, ...] = (
    Filter("age", "Age group", "age", ("workouts", "visits", "members")),
    Filter("city", "City", "city", ("workouts", "visits", "members")),
    Filter("gender", "Gender", "gender", ("workouts", "visits", "members")),
    Filter("date", "Date range", "date", ("workouts", "visits", "occupancy")),
)
