"""Ground truth: what a world simulated, written as JSON lines next to a manifest.

Files (times are ISO-8601 UTC strings with microseconds, ``…Z``; epoch-second payload fields stay
inside the message values exactly as sent):

- ``manifest.json``: knobs, start/end, late-wave start, max event time per topic, counts.
- ``messages.jsonl``: every Kafka record in delivery order (main data, then the late wave):
  index, wave (main/late), kind (good/duplicate/bad/late), topic, key, value, timestamp_ms.
- ``registrations.jsonl``: every version of a registration (op insert/update);
  ``registered_users.jsonl``: the final table (one row per user_id).
- ``visits.jsonl``: the final ``gym_logins`` rows (logout null while open) with their member.
- ``profile_changes.jsonl``: every user_info change, its profile (zip as 5 digits) and delivery.
- ``sessions.jsonl``: every session with status complete/incomplete/invalid and stop delivery.
- ``readings.jsonl``: every heart-rate reading (late ones included).
- ``bad_records.jsonl``: every record the pipeline must quarantine, with reason, kind and field.

A record listed in ``bad_records.jsonl`` with reason ``late`` is only late if the main data was
ingested in earlier micro-batches than the late wave (that is what the late wave is for).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fitbit_stream.generator.model import KafkaEmission, iso
from fitbit_stream.generator.world import Profile, World

__all__ = ["TRUTH_FILES", "write_truth"]

TRUTH_FILES = (
    "manifest.json",
    "messages.jsonl",
    "registrations.jsonl",
    "registered_users.jsonl",
    "visits.jsonl",
    "profile_changes.jsonl",
    "sessions.jsonl",
    "readings.jsonl",
    "bad_records.jsonl",
)


def _opt_iso(us: int | None) -> str | None:
    return None if us is None else iso(us)


def _profile(p: Profile | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "dob": p.dob.isoformat(),
        "sex": p.sex,
        "gender": p.gender,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "street_address": p.street_address,
        "city": p.city,
        "state": p.state,
        "zip": p.zip5,
    }


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(encode(row))
            fh.write("\n")
            n += 1
    return n


def _messages(world: World) -> Iterator[dict[str, Any]]:
    index = 0
    for _at, em, kind in world.timed_emissions(main=True, late_wave=True):
        if not isinstance(em, KafkaEmission):
            continue
        yield {
            "index": index,
            "wave": "late" if kind == "late" else "main",
            "kind": kind,
            "topic": em.topic,
            "key": em.key,
            "value": em.value,
            "timestamp_ms": em.timestamp_ms,
        }
        index += 1


def write_truth(world: World, directory: str | Path) -> dict[str, Any]:
    """Write the ground truth of ``world`` under ``directory``; return the manifest."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {}
    counts["messages"] = _write_lines(out / "messages.jsonl", _messages(world))
    _write_lines(
        out / "registrations.jsonl",
        (
            {
                "op": r.op,
                "user_id": r.row.user_id,
                "device_id": r.row.device_id,
                "mac_address": r.row.mac_address,
                "registration_timestamp": iso(r.row.registration_us),
            }
            for r in world.registrations
        ),
    )
    final: dict[int, Any] = {}
    for r in world.registrations:
        if r.row.user_id not in final or r.row.registration_us >= final[r.row.user_id].registration_us:
            final[r.row.user_id] = r.row
    _write_lines(
        out / "registered_users.jsonl",
        (
            {
                "user_id": row.user_id,
                "device_id": row.device_id,
                "mac_address": row.mac_address,
                "registration_timestamp": iso(row.registration_us),
            }
            for _uid, row in sorted(final.items())
        ),
    )
    _write_lines(
        out / "visits.jsonl",
        (
            {
                "mac_address": v.mac_address,
                "gym": v.gym,
                "login": iso(v.login_us),
                "logout": _opt_iso(v.logout_us),
                "user_id": v.user_id,
                "device_id": v.device_id,
                "readings": v.readings,
            }
            for v in world.visits
        ),
    )
    _write_lines(
        out / "profile_changes.jsonl",
        (
            {
                "user_id": c.user_id,
                "update_type": c.update_type,
                "timestamp": iso(c.time_us),
                "profile": _profile(c.profile),
                "delivery": c.delivery,
                "value": c.value,
                "timestamp_ms": c.timestamp_ms,
            }
            for c in world.profile_changes
        ),
    )
    _write_lines(
        out / "sessions.jsonl",
        (
            {
                "user_id": s.user_id,
                "workout_id": s.workout_id,
                "session_id": s.session_id,
                "start": iso(s.start_us),
                "stop": _opt_iso(s.stop_us),
                "status": s.status,
                "kind": s.kind,
                "stop_delivery": s.stop_delivery,
                "gym": s.gym,
                "mac_address": s.mac_address,
                "device_id": s.device_id,
                "visit_login": iso(s.visit_login_us),
            }
            for s in world.sessions
        ),
    )
    # The biggest file by far: formatted by hand (the heart rate is already exact JSON text).
    n = 0
    with (out / "readings.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for reading in world.readings():
            device, t, hr = reading
            fh.write(f'{{"device_id":{device},"time":"{iso(t)}","heartrate":{hr}}}\n')
            n += 1
    counts["readings"] = n
    _write_lines(
        out / "bad_records.jsonl",
        (
            {
                "reason": b.reason,
                "kind": b.kind,
                "field": b.field,
                "injected": b.injected,
                "topic": b.topic,
                "key": b.key,
                "value": b.value,
                "timestamp_ms": b.timestamp_ms,
                "source": b.source,
            }
            for b in world.bad_records()
        ),
    )
    manifest = {
        "generator": "fitbit_stream.generator",
        "format": 1,
        "config": world.config.model_dump(mode="json"),
        "start": iso(world.start_us),
        "end": iso(world.end_us),
        "late_wave_start": iso(world.late_wave_start_ms * 1000),
        "max_event_time": {k: _opt_iso(v) for k, v in world.max_event_us.items()},
        "chaos_requested": world.chaos_counts._asdict(),
        "counts": {**world.counts(), **counts},
        "files": list(TRUTH_FILES),
    }
    (out / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest
