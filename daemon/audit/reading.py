"""Reading records back: filtered in seq order, or the last few.

Read-only and lock-free, so `igrtctl audit show` is safe while igrtd appends.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemon.audit.errors import AuditCorruptError, AuditError
from daemon.audit.record import AuditRecord, parse_line
from daemon.audit.segments import iter_segment_lines, list_segments, read_tail, split_lines

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(ts: float) -> int:
    """`ts` in whole microseconds, rounded exactly as `iso_utc` displays it."""
    return (datetime.fromtimestamp(ts, UTC) - _EPOCH) // timedelta(microseconds=1)


def read_records(
    directory: Path,
    since: float | None = None,
    until: float | None = None,
    actor: str | None = None,
    event: str | None = None,
) -> Iterator[AuditRecord]:
    """Records in seq order, filtered; read-only (safe while igrtd appends).

    `since`/`until` are inclusive UNIX times. An unterminated final line (a
    write in progress, or torn by a crash) is skipped. An unreadable record
    raises AuditCorruptError naming file and line: run `verify`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AuditError(f"audit directory {directory} does not exist")
    since_us = None if since is None else _micros(since)
    until_us = None if until is None else _micros(until)
    for _, path in list_segments(directory):
        for number, raw, terminated in iter_segment_lines(path):
            if not terminated:
                continue
            try:
                rec = parse_line(raw)
            except ValueError as exc:
                raise AuditCorruptError(
                    f"{path.name} line {number}: {exc}; run `igrtctl audit verify`"
                ) from None
            # Compare at the microsecond the `time` field shows, so a time
            # copied from `audit show` selects that very record.
            if since_us is not None and _micros(rec.ts) < since_us:
                continue
            if until_us is not None and _micros(rec.ts) > until_us:
                continue
            if actor is not None and rec.actor != actor:
                continue
            if event is not None and rec.event != event:
                continue
            yield rec


def tail_records(directory: Path, n: int) -> list[AuditRecord]:
    """The last `n` records, oldest first, reading only the end of the log."""
    if n <= 0:
        return []
    out: list[AuditRecord] = []
    for _, path in reversed(list_segments(Path(directory))):
        data, base = read_tail(path, n - len(out))
        lines, _ = split_lines(data, base)
        chunk = []
        for _, raw in lines[-(n - len(out)) :]:
            try:
                chunk.append(parse_line(raw))
            except ValueError as exc:
                raise AuditCorruptError(f"{path.name}: {exc}; run `igrtctl audit verify`") from None
        out[:0] = chunk
        if len(out) >= n:
            break
    return out
