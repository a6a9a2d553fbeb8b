"""The query graph, declared once: every query (and batch step) with the tables it reads and writes.

The scheduler (``pipeline``), the checkpoint guard (``io.guard``), rebuild and recompute
(``recompute``) and the tests read this declaration; none of them spells a query's inputs or
outputs again. Table names are the contract's (``schemas.TABLES``) plus the writers' internal ones.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, get_args

from fitbit_stream.errors import PipelineError

__all__ = [
    "ALL_JOBS",
    "ALL_QUERIES",
    "DATE_LOOKUP_SOURCES",
    "INGEST_WRITES",
    "INTERNAL_TABLES",
    "KAFKA_INGEST_LAYERED",
    "KAFKA_INGEST_REALTIME",
    "KINDS",
    "QUERIES",
    "TAIL",
    "TOPIC_QUERIES",
    "TOPIC_WRITES",
    "WORKOUT_QUERIES_LAYERED",
    "WORKOUT_QUERIES_REALTIME",
    "JobLayer",
    "Kind",
    "Mode",
    "QuerySpec",
    "SourceKind",
    "checkpointed",
    "ingest_writes",
    "kafka_queries",
    "queries",
    "query",
    "select_jobs",
    "waves",
    "writers_of_inputs",
]

#: The jobs a run can select: a query belongs to the job that runs it. (Storage layers are
#: ``config.Layer``, which also has ``ops``; a job writes ops tables beside its own layer.)
JobLayer = Literal["bronze", "silver", "gold"]
ALL_JOBS: tuple[JobLayer, ...] = get_args(JobLayer)

#: How a query reads its input.
#: ``kafka``/``landing``: the raw source, into bronze (and in ``realtime`` mode silver's topic
#: tables, ``io.ingest``);
#: ``sql``: a poll of the SQL database (a batch step, no checkpoint); ``bronze_topic``: one topic's
#: records of ``kafka_multiplex_bz`` (``layered`` mode); ``bronze_table``: a SQL bronze
#: table's appends; ``change_feed``: the Delta change feeds of all its inputs; ``batch``: a batch
#: step over whole tables (no checkpoint).
SourceKind = Literal["kafka", "landing", "sql", "bronze_topic", "bronze_table", "change_feed", "batch"]

#: The payload kinds (Kafka topics) in the order their writers run.
Kind = Literal["user_info", "bpm", "workout"]
KINDS: tuple[Kind, ...] = get_args(Kind)


@dataclass(frozen=True)
class QuerySpec:
    """One query of the pipeline (its name is also its checkpoint directory's)."""

    name: str
    job: JobLayer
    source: SourceKind
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    #: the tables whose rows prove that the query committed a batch before (the checkpoint guard
    #: refuses a new checkpoint for a query whose evidence holds rows); empty for batch steps.
    evidence: tuple[str, ...] = ()
    #: the payload kind of a ``bronze_topic`` query (``layered`` mode)
    kind: Kind | None = None
    #: the payload kinds (topics) an ingest query (``kafka``, ``landing``) reads
    kinds: tuple[Kind, ...] = ()

    @property
    def streaming(self) -> bool:
        """Whether the query is a streaming query with a checkpoint (not a batch step)."""
        return self.source not in ("sql", "batch")


#: The batch tail of silver: ``user_bins``, ``date_lookup`` and the CDC tombstone purge.
TAIL = "user_bins+date_lookup+tombstones"

#: Where ``date_lookup``'s years come from (CONTRACT §2.2): (table, date or timestamp columns).
#: Record timestamps, every accepted event time (each accepted record is in ``heart_rate``,
#: ``workouts`` or the CDC change log with its event time), registrations, logins and logouts.
#: The streaming tail reads these tables; the batch recomputation derives the same tables from
#: bronze and reads them the same way.
DATE_LOOKUP_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kafka_multiplex_bz", ("timestamp",)),
    ("heart_rate", ("time",)),
    ("workouts", ("time",)),
    ("_user_profile_changes", ("event_time",)),
    # subsets of the change log's times, kept because the tombstone purge forgets changes
    ("user_profile_history", ("valid_from", "valid_to")),
    ("user_profile", ("updated",)),
    ("registered_users_bz", ("registration_timestamp",)),
    ("gym_logins_bz", ("login", "logout")),
)

#: Writer-internal tables (not in the contract) and their storage layer: they hold silver state and
#: are reset with silver.
INTERNAL_TABLES: dict[str, str] = {
    "_workout_events": "silver",
    "_user_profile_changes": "silver",
    "_event_time_state": "ops",
}

#: The silver tables a topic's writer fills (``io.silver.TopicWriter``), by payload kind.
TOPIC_WRITES: dict[Kind, tuple[str, ...]] = {
    "user_info": ("quarantine", "_user_profile_changes", "user_profile", "user_profile_history"),
    "bpm": ("quarantine", "heart_rate"),
    "workout": ("quarantine", "_workout_events", "workouts", "completed_workouts"),
}
#: The table whose rows prove a topic writer committed a batch (the checkpoint guard's evidence).
TOPIC_EVIDENCE: dict[Kind, str] = {"user_info": "user_profile_history", "bpm": "heart_rate", "workout": "workouts"}


def ingest_writes(kinds: Iterable[Kind]) -> tuple[str, ...]:
    """What an ingest query reading ``kinds`` writes from one micro-batch in ``realtime`` mode: their
    silver topic tables, then bronze (``io.ingest``); a record reaches silver in one hop."""
    return (*dict.fromkeys(t for kind in kinds for t in TOPIC_WRITES[kind]), "kafka_multiplex_bz")


INGEST_WRITES = ingest_writes(KINDS)

Mode = Literal["realtime", "layered"]

#: ``realtime`` mode reads Kafka with two queries: the 1 Hz readings on their own, and the
#: low-volume topics whose writes take several commits in a row (the CDC engine's three, workout
#: events then sessions). A reading's micro-batch never waits for those chains, so ``heart_rate``
#: lags Kafka by one short batch.
KAFKA_INGEST_REALTIME: tuple[tuple[str, tuple[Kind, ...]], ...] = (
    ("bronze_kafka_bpm", ("bpm",)),
    ("bronze_kafka_user_info_workout", ("user_info", "workout")),
)
#: ``layered`` mode's one Kafka query (bronze only; the topic queries read it back).
KAFKA_INGEST_LAYERED = "bronze_kafka_multiplex"


def _ingest(mode: Mode) -> tuple[QuerySpec, ...]:
    bronze = ("kafka_multiplex_bz",)
    writes: tuple[str, ...]
    kafka: tuple[QuerySpec, ...]
    if mode == "layered":
        writes = ("quarantine", "kafka_multiplex_bz")
        kafka = (QuerySpec(KAFKA_INGEST_LAYERED, "bronze", "kafka", (), writes, bronze, kinds=KINDS),)
    else:
        writes = INGEST_WRITES
        kafka = tuple(
            QuerySpec(name, "bronze", "kafka", (), ingest_writes(kinds), bronze, kinds=kinds)
            for name, kinds in KAFKA_INGEST_REALTIME
        )
    return (
        *kafka,
        # Reads bronze: on a new checkpoint it skips what bronze holds, so it starts after the Kafka queries.
        QuerySpec("bronze_landing_multiplex", "bronze", "landing", bronze, writes, bronze, kinds=KINDS),
    )


#: ``layered`` mode only: one query per topic reads bronze into silver.
TOPIC_QUERIES: tuple[QuerySpec, ...] = tuple(
    QuerySpec(
        f"silver_{kind}",
        "silver",
        "bronze_topic",
        ("kafka_multiplex_bz",),
        TOPIC_WRITES[kind],
        (TOPIC_EVIDENCE[kind],),
        kind=kind,
    )
    for kind in KINDS
)

_REST: tuple[QuerySpec, ...] = (
    QuerySpec("bronze_sql", "bronze", "sql", (), ("registered_users_bz", "gym_logins_bz")),
    QuerySpec("silver_users", "silver", "bronze_table", ("registered_users_bz",), ("users",), ("users",)),
    QuerySpec("silver_gym_logs", "silver", "bronze_table", ("gym_logins_bz",), ("gym_logs",), ("gym_logs",)),
    QuerySpec(
        TAIL,
        "silver",
        "batch",
        tuple(t for t, _ in DATE_LOOKUP_SOURCES),
        ("user_bins", "date_lookup"),
    ),
    QuerySpec(
        "derived_gym_summary",
        "gold",
        "change_feed",
        ("gym_logs", "users", "completed_workouts"),
        ("gym_summary",),
        ("gym_summary",),
    ),
    QuerySpec("derived_gym_occupancy", "gold", "change_feed", ("gym_logs",), ("gym_occupancy",), ("gym_occupancy",)),
)


#: ``layered`` mode: ``workout_bpm`` (the silver job's) and its summary (the gold job's) each have a
#: query, so each layer's job writes only its own tables.
WORKOUT_QUERIES_LAYERED: tuple[QuerySpec, ...] = (
    QuerySpec(
        "derived_workout_bpm",
        "silver",
        "change_feed",
        ("heart_rate", "completed_workouts", "users"),
        ("workout_bpm",),
        ("workout_bpm",),
    ),
    QuerySpec(
        "derived_workout_bpm_summary",
        "gold",
        "change_feed",
        ("completed_workouts", "workout_bpm", "user_profile_history"),
        ("workout_bpm_summary",),
        ("workout_bpm_summary",),
    ),
)
#: ``realtime`` mode: one query writes ``workout_bpm`` and then its summary from each micro-batch,
#: so a reading reaches gold one derived batch after silver (the gold job's: in this mode silver's
#: topic tables are the ingest query's, and the derived tables are gold's).
WORKOUT_QUERIES_REALTIME: tuple[QuerySpec, ...] = (
    QuerySpec(
        "derived_workout_bpm_and_summary",
        "gold",
        "change_feed",
        ("heart_rate", "completed_workouts", "users", "user_profile_history"),
        ("workout_bpm", "workout_bpm_summary"),
        ("workout_bpm", "workout_bpm_summary"),
    ),
)


def kafka_queries(mode: Mode = "realtime") -> tuple[str, ...]:
    """The names of the queries that read Kafka in ``mode``."""
    return tuple(q.name for q in queries(mode) if q.source == "kafka")


def queries(mode: Mode = "realtime") -> tuple[QuerySpec, ...]:
    """Every query of the mode, in the order a drain starts them when their inputs allow."""
    ingest = _ingest(mode)
    topics = TOPIC_QUERIES if mode == "layered" else ()
    workouts = WORKOUT_QUERIES_LAYERED if mode == "layered" else WORKOUT_QUERIES_REALTIME
    return (*ingest, _REST[0], *topics, *_REST[1:], *workouts)


#: The queries of the default mode.
QUERIES: tuple[QuerySpec, ...] = queries()
#: Every query name either mode uses, with its spec (names are checkpoint directories).
ALL_QUERIES: tuple[QuerySpec, ...] = (
    *queries("realtime"),
    *(q for q in queries("layered") if q.name not in {r.name for r in queries("realtime")}),
)


_BY_NAME = {q.name: q for q in ALL_QUERIES}


def query(name: str) -> QuerySpec:
    """The query called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise PipelineError(f"unknown query {name!r}: choose from {', '.join(_BY_NAME)}") from None


def select_jobs(jobs: str | Collection[str]) -> tuple[JobLayer, ...]:
    """``"all"``, one job name or several, validated, in dependency order."""
    wanted = {jobs} if isinstance(jobs, str) else set(jobs)
    if "all" in wanted:
        return ALL_JOBS
    unknown = wanted - set(ALL_JOBS)
    if unknown or not wanted:
        raise PipelineError(f"unknown layer(s) {sorted(unknown)}: choose from {', '.join(ALL_JOBS)} or all")
    return tuple(job for job in ALL_JOBS if job in wanted)


def checkpointed(jobs: Iterable[JobLayer] = ALL_JOBS, *, mode: Mode | None = None) -> list[str]:
    """The names of the streaming queries (each has a checkpoint) of ``jobs`` in ``mode`` (None: either)."""
    chosen = set(jobs)
    specs = ALL_QUERIES if mode is None else queries(mode)
    return [q.name for q in specs if q.streaming and q.job in chosen]


class _Node(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def reads(self) -> tuple[str, ...]: ...
    @property
    def writes(self) -> tuple[str, ...]: ...


N = TypeVar("N", bound=_Node)


def writers_of_inputs(node: N, nodes: Collection[N]) -> list[N]:
    """The other nodes that write a table ``node`` reads: it starts when they have all ended."""
    return [s for s in nodes if s is not node and set(s.writes) & set(node.reads)]


def waves(nodes: Collection[N]) -> list[list[str]]:
    """The names of ``nodes`` (queries or steps) by the round of a drain they can start in.

    Round 0 needs nothing; round n needs a node of round n - 1. A node may start earlier than its
    round's peers (when its own inputs end first), never before its inputs' writers have ended.
    """
    rounds: dict[str, int] = {}
    remaining = list(nodes)
    while remaining:
        level = [s for s in remaining if all(w.name in rounds for w in writers_of_inputs(s, nodes))]
        if not level:
            raise PipelineError(f"cannot order {[s.name for s in remaining]}: they read each other's tables")
        for s in level:
            rounds[s.name] = 1 + max((rounds[w.name] for w in writers_of_inputs(s, nodes)), default=-1)
        remaining = [s for s in remaining if s not in level]
    out: list[list[str]] = [[] for _ in range(max(rounds.values(), default=-1) + 1)]
    for s in nodes:
        out[rounds[s.name]].append(s.name)
    return out
