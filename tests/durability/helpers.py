"""Helpers for the durability tests: build, read and rewrite audit segments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.audit import AuditLog, list_segments, record_hash


def make_log(directory: Path, n: int, *, segment_max_records: int = 100_000) -> None:
    with AuditLog(directory, segment_max_records=segment_max_records) as log:
        for i in range(n):
            log.append("command", f"user{i % 3}", index=i)


def only_segment(directory: Path) -> Path:
    segments = list_segments(directory)
    assert len(segments) == 1
    return segments[0][1]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    path.write_bytes(body.encode())


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """What a tamperer who knows the format does after editing a record."""
    record = dict(record)
    record["hash"] = record_hash(record)
    return record
