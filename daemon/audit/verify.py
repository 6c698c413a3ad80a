"""The verifier: walk the whole chain and name the first place it breaks.

It checks each line through `record.parse_line`, the same code the writer's
recovery uses, and compares the end of the chain with the head anchor the
writer keeps in HEAD_FILE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from daemon.audit.errors import AuditCorruptError
from daemon.audit.reading import tail_records
from daemon.audit.record import GENESIS_HASH, parse_line
from daemon.audit.segments import HEAD_FILE, iter_segment_lines, list_segments
from safety import strict_json


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    first_bad: int | None  # seq position where the chain stops being trustworthy
    problem: str
    warnings: tuple[str, ...] = ()
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    segments: int = 0


def verify(directory: Path) -> VerifyResult:
    """Walk the whole chain and report the first place it breaks.

    `first_bad` is the seq position at which the chain stops being
    trustworthy: every record before it verified. For an edited record that
    is the record itself; for removed, reordered or inserted records it is the
    first position holding something other than the expected successor.
    A record edited *and re-hashed* shows up one later, as the next record's
    broken link (docs/audit.md: anchoring the head hash closes that gap).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return VerifyResult(False, 0, None, f"audit directory {directory} does not exist")
    segments = list_segments(directory)
    warnings: list[str] = []
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0

    def bad(where: str, why: str) -> VerifyResult:
        return VerifyResult(
            False,
            count,
            expected_seq,
            f"record seq {expected_seq} ({where}): {why}",
            tuple(warnings),
            expected_seq - 1,
            prev_hash,
            len(segments),
        )

    for index, (first_seq, path) in enumerate(segments):
        is_last = index == len(segments) - 1
        if first_seq != expected_seq:
            return bad(
                f"{path.name}",
                f"segment starts at seq {first_seq}, expected {expected_seq} "
                "(segment missing, renamed or reordered)",
            )
        seen_in_segment = 0
        for number, raw, terminated in iter_segment_lines(path):
            where = f"{path.name} line {number}"
            if not terminated:
                if is_last:
                    warnings.append(
                        f"{where}: unterminated final line ({len(raw)} bytes), torn by a crash "
                        "or being written; igrtd discards it (keeping its bytes) on next start"
                    )
                    continue
                return bad(where, "unterminated line in the middle of the log")
            try:
                rec = parse_line(raw)
            except ValueError as exc:
                return bad(where, str(exc))
            if rec.seq != expected_seq:
                return bad(
                    where,
                    f"found seq {rec.seq} where seq {expected_seq} belongs "
                    "(records removed, reordered or inserted)",
                )
            if rec.prev_hash != prev_hash:
                return bad(
                    where,
                    "prev_hash does not match the previous record's hash "
                    "(a record removed, reordered, inserted, or the previous one re-hashed)",
                )
            prev_hash = rec.hash
            expected_seq += 1
            count += 1
            seen_in_segment += 1
        if seen_in_segment == 0 and not is_last:
            return bad(path.name, "empty segment in the middle of the log")

    head_problem = _check_head_anchor(directory, expected_seq - 1, prev_hash)
    if head_problem:
        return VerifyResult(
            False,
            count,
            expected_seq,
            head_problem,
            tuple(warnings),
            expected_seq - 1,
            prev_hash,
            len(segments),
        )
    return VerifyResult(
        True, count, None, "", tuple(warnings), expected_seq - 1, prev_hash, len(segments)
    )


def read_head_anchor(directory: Path) -> tuple[int, str] | None:
    """(seq, hash) from HEAD_FILE, None if there is none; also used by the writer."""
    try:
        obj = strict_json.loads((directory / HEAD_FILE).read_bytes(), max_depth=4,
                                max_bytes=4096)
        return int(obj["seq"]), str(obj["hash"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise AuditCorruptError(f"{HEAD_FILE} unreadable: {exc}") from None


def _check_head_anchor(directory: Path, last_seq: int, last_hash: str) -> str:
    """The head anchor records how far the log was known to reach; records
    at or before it must all still be there (catches a lost last segment)."""
    try:
        anchor = read_head_anchor(directory)
    except AuditCorruptError as exc:
        return str(exc)
    if anchor is None:
        return ""
    seq, digest = anchor
    if last_seq < seq:
        return (
            f"log ends at seq {last_seq} but {HEAD_FILE} says seq {seq} was written "
            "(records removed from the end)"
        )
    if seq > 0 and seq == last_seq and digest != last_hash:
        return f"record seq {seq} hash differs from {HEAD_FILE} (tail rewritten)"
    if 0 < seq < last_seq:
        for rec in tail_records(directory, last_seq - seq + 1)[:1]:
            if rec.seq == seq and rec.hash != digest:
                return f"record seq {seq} hash differs from {HEAD_FILE} (log rewritten)"
    return ""
