"""The audit log: append-only, hash-chained, durable (R-AUDIT).

Storage is a directory of JSON-lines segment files, one record per line,
named after the seq of their first record (``audit-000000000001.jsonl``).
Each record carries the sha256 of the previous record (``prev_hash``) and its
own ``hash`` over the canonical JSON of everything else, so editing, removing,
reordering or inserting a record breaks the chain at that point and
`verify` names where. Why segment files rather than SQLite: docs/audit.md.

Durability contract: `AuditLog.append` returns only after the line has been
written and fdatasync'd, so the daemon appends *before* it acts or
acknowledges. After a power loss only the final line can be torn (every
earlier one was synced before the next was written); `AuditLog.open` cuts a
torn final line away, keeps its bytes in a recovery record, and refuses to
"repair" anything else.

Why one module of ~850 lines: the record format, the writer, the recovery of
a torn tail, the reader and the verifier must agree byte for byte on the
canonical form and the chain; kept together, one change cannot update the
writer and forget the verifier.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Self

from safety import strict_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
SEGMENT_RE = re.compile(r"^audit-(\d{12})\.jsonl$")
HEAD_FILE = "audit.head.json"
LOCK_FILE = ".lock"
# Evidence kept from a torn final line (a record is ~300 bytes).
MAX_DISCARDED_EVIDENCE = 64 * 1024
# One record is a few hundred bytes; a line far beyond this was not written by igrtd.
AUDIT_LINE_MAX_BYTES = 4 << 20
_FIELDS = ("v", "seq", "ts", "time", "event", "actor", "details", "prev_hash", "hash")


class AuditError(Exception):
    """Base class; the message is one line fit for a user."""


class AuditCorruptError(AuditError):
    """The log is damaged in a way that must not be repaired automatically."""


class AuditLockedError(AuditError):
    """Another process holds the log open for writing."""


class AuditWriteError(AuditError):
    """A record could not be made durable; the log refuses further appends."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: float
    event: str
    actor: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    @property
    def time_iso(self) -> str:
        return iso_utc(self.ts)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (key order chosen for reading with grep/less)."""
        return {
            "seq": self.seq,
            "time": self.time_iso,
            "event": self.event,
            "actor": self.actor,
            "details": self.details,
            "ts": self.ts,
            "prev_hash": self.prev_hash,
            "v": FORMAT_VERSION,
            "hash": self.hash,
        }


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


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types, so what is hashed is exactly what is stored.

    The daemon passes poses, enums and pydantic models as details; auditing
    must never fail because of a type, so anything unknown becomes its str().
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN/Infinity; keep them visible instead of failing.
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if hasattr(value, "model_dump"):  # pydantic v2 model
        return jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def canonical_json(obj: Any) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(fields: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the record without its `hash`."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def segment_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment file, in chain order."""
    found = []
    for entry in directory.iterdir():
        m = SEGMENT_RE.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    found.sort()
    return found


def parse_line(line: bytes) -> AuditRecord:
    """Parse and self-check one stored line (without its newline).

    Raises ValueError naming what is wrong; checks the record's own hash but
    not its link to the previous record.
    """
    # A stored line is outside input to `audit verify` (the file may have been
    # edited): read strictly, so a deep, duplicated or non-finite line is a bad
    # record, never a crash of the verifier.
    try:
        obj = strict_json.loads(line, max_bytes=AUDIT_LINE_MAX_BYTES)
    except strict_json.JsonInputError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - one error type for "bad line"
    if set(obj) != set(_FIELDS):
        missing = sorted(set(_FIELDS) - set(obj))
        extra = sorted(set(obj) - set(_FIELDS))
        raise ValueError(f"wrong fields (missing {missing}, unexpected {extra})")
    types = {
        "v": int,
        "seq": int,
        "ts": (int, float),
        "time": str,
        "event": str,
        "actor": str,
        "details": dict,
        "prev_hash": str,
        "hash": str,
    }
    for key, typ in types.items():
        if not isinstance(obj[key], typ) or isinstance(obj[key], bool):  # type: ignore[arg-type]
            raise ValueError(f"field {key!r} has the wrong type")  # noqa: TRY004
    if obj["v"] != FORMAT_VERSION:
        raise ValueError(f"unknown format version {obj['v']}")
    if record_hash(obj) != obj["hash"]:
        raise ValueError("hash does not match the record's content (record edited)")
    if obj["time"] != iso_utc(float(obj["ts"])):
        raise ValueError("time does not match ts")
    return AuditRecord(
        seq=obj["seq"],
        ts=float(obj["ts"]),
        event=obj["event"],
        actor=obj["actor"],
        details=obj["details"],
        prev_hash=obj["prev_hash"],
        hash=obj["hash"],
    )


def _read_tail(path: Path, want_lines: int) -> tuple[bytes, int]:
    """The last bytes of `path` holding at least `want_lines` complete lines
    (plus any unterminated fragment), and the file offset they start at."""
    size = path.stat().st_size
    block = 64 * 1024
    chunks: list[bytes] = []
    newlines = 0
    start = size
    with path.open("rb") as f:
        while start > 0:
            step = min(block, start)
            start -= step
            f.seek(start)
            chunk = f.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            # want_lines + 1 newlines guarantee the first kept line is whole.
            if newlines > want_lines:
                break
    data = b"".join(reversed(chunks))
    if start > 0:
        cut = data.index(b"\n") + 1
        data, start = data[cut:], start + cut
    return data, start


def _split_lines(
    data: bytes, base: int
) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None]:
    """Complete lines as (offset, bytes without newline), and a trailing fragment."""
    lines = []
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        lines.append((base + pos, data[pos:nl]))
        pos = nl + 1
    fragment = (base + pos, data[pos:]) if pos < len(data) else None
    return lines, fragment


def _iter_segment_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes without newline, terminated) for each line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.endswith(b"\n"):
                yield number, raw[:-1], True
            else:
                yield number, raw, False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --------------------------------------------------------------------------- reading


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
        for number, raw, terminated in _iter_segment_lines(path):
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
        data, base = _read_tail(path, n - len(out))
        lines, _ = _split_lines(data, base)
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


# ------------------------------------------------------------------------- verifying


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
        for number, raw, terminated in _iter_segment_lines(path):
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


def _read_head_anchor(directory: Path) -> tuple[int, str] | None:
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
        anchor = _read_head_anchor(directory)
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


# -------------------------------------------------------------------------- writing


class AuditLog:
    """The writer. One per directory (an flock keeps a second igrtd out)."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool = True,
        segment_max_records: int = 100_000,
    ) -> None:
        if segment_max_records < 1:
            raise ValueError(f"segment_max_records {segment_max_records} must be >= 1")
        self.directory = Path(directory)
        self.fsync = fsync
        self.segment_max_records = segment_max_records
        self.recoveries: list[dict[str, Any]] = []  # what open() had to repair, for logging
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment_first = 0
        self._segment_path: Path | None = None
        self._size = 0
        self._seq = 0
        self._hash = GENESIS_HASH
        self._failed: BaseException | None = None

    # -- lifecycle

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    def open(self) -> None:
        with self._lock:
            if self._lock_fd is not None:
                return
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            lock_fd = os.open(
                self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(lock_fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise AuditLockedError(
                        f"audit log {self.directory} is open in another process"
                    ) from None
                raise
            self._lock_fd = lock_fd
            try:
                pending = self._recover_tail()
                self._failed = None
            except BaseException:
                self._release()
                raise
        for rec in pending:
            self.append("audit_recovery", "system", **rec)

    def close(self) -> None:
        with self._lock:
            if self._lock_fd is None:
                return
            if self._failed is None and self._seq > 0:
                try:
                    self._write_head_anchor()
                except OSError as exc:
                    log.warning("could not write audit head anchor: %s", exc)
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- state

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last durable record; publish it to anchor the chain."""
        with self._lock:
            return self._seq, self._hash

    def checkpoint(self) -> None:
        """Persist the head anchor now (also done on rotation and close)."""
        with self._lock:
            self._require_writable()
            self._write_head_anchor()

    # -- appending

    def append(self, event: str, actor: str, **details: Any) -> AuditRecord:
        """Write one record and make it durable before returning it."""
        if not isinstance(event, str) or not event:
            raise ValueError(f"audit event must be a non-empty string, got {event!r}")
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"audit actor must be a non-empty string, got {actor!r}")
        clean_details = jsonable(details)
        with self._lock:
            self._require_writable()
            ts = time.time()
            fields: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": iso_utc(ts),
                "event": event,
                "actor": actor,
                "details": clean_details,
                "ts": ts,
                "prev_hash": self._hash,
                "v": FORMAT_VERSION,
            }
            digest = record_hash(fields)
            fields["hash"] = digest
            line = (json.dumps(fields, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
            rotating = (
                self._fd is None or self._seq - self._segment_first + 1 >= self.segment_max_records
            )
            try:
                if rotating:
                    self._start_segment(self._seq + 1)
                assert self._fd is not None
                _write_all(self._fd, line)
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError as exc:
                # After a failed write/fsync the file's durable state is unknown
                # (dirty pages may be dropped): stop accepting records and let
                # the next open() sort out the tail.
                self._failed = exc
                try:
                    if self._fd is not None:
                        os.ftruncate(self._fd, self._size)
                except OSError:
                    pass
                raise AuditWriteError(f"audit record could not be made durable: {exc}") from exc
            self._size += len(line)
            self._seq += 1
            self._hash = digest
            if rotating and self._seq > 1:
                try:
                    self._write_head_anchor()
                except OSError as exc:
                    log.warning("could not write audit head anchor: %s", exc)
            return AuditRecord(
                fields["seq"], ts, event, actor, clean_details, fields["prev_hash"], digest
            )

    def _require_writable(self) -> None:
        if self._lock_fd is None:
            raise AuditError("audit log is not open")
        if self._failed is not None:
            raise AuditWriteError(
                f"audit log refused: an earlier write failed ({self._failed}); restart igrtd"
            )

    def _start_segment(self, first_seq: int) -> None:
        path = self.directory / segment_name(first_seq)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(path, flags, 0o640)
        # The new directory entry must be durable too, or a crash could lose
        # a whole segment of "durable" records.
        os.fsync(fd)
        _fsync_dir(self.directory)
        self._fd = fd
        self._segment_first = first_seq
        self._segment_path = path
        self._size = os.fstat(fd).st_size

    def _write_head_anchor(self) -> None:
        tmp = self.directory / (HEAD_FILE + ".tmp")
        body = json.dumps({"seq": self._seq, "hash": self._hash, "at": iso_utc(time.time())})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, body.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / HEAD_FILE)
        _fsync_dir(self.directory)

    # -- recovery

    def _recover_tail(self) -> list[dict[str, Any]]:
        """Find the head of the chain; cut away a torn final line.

        Returns recovery records to append once the log is writable.
        """
        self.recoveries = []
        segments = list_segments(self.directory)
        self._seq, self._hash = 0, GENESIS_HASH
        self._fd, self._segment_path, self._size = None, None, 0
        if not segments:
            self._check_anchor_not_ahead()
            return []
        # An empty last segment is left by a crash right after rotation.
        first_seq, path = segments[-1]
        pending: list[dict[str, Any]] = []
        torn = self._cut_torn_final_line(path)
        if torn:
            pending.append(torn)
        if path.stat().st_size == 0:
            if len(segments) > 1:
                _, prev_path = segments[-2]
                last = self._last_record(prev_path)
                if last is None:
                    raise AuditCorruptError(
                        f"{prev_path.name} is empty but is not the last segment"
                    )
                self._seq, self._hash = last.seq, last.hash
            if first_seq != self._seq + 1:
                raise AuditCorruptError(
                    f"{path.name} is named for seq {first_seq} but the log ends at seq {self._seq}"
                )
        else:
            last = self._last_record(path)
            assert last is not None
            if last.seq - first_seq + 1 < 1:
                raise AuditCorruptError(
                    f"{path.name}: last record seq {last.seq} precedes the segment"
                )
            self._seq, self._hash = last.seq, last.hash
        self._check_anchor_not_ahead()
        # Append into the last segment; rotation happens on the next append if full.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._fd, self._segment_first, self._segment_path = fd, first_seq, path
        self._size = os.fstat(fd).st_size
        self.recoveries = pending
        for rec in pending:
            log.warning("audit log recovered: %s", rec)
        return pending

    def _check_anchor_not_ahead(self) -> None:
        anchor = _read_head_anchor(self.directory)
        if anchor is not None and anchor[0] > self._seq:
            raise AuditCorruptError(
                f"audit log ends at seq {self._seq} but {HEAD_FILE} says seq {anchor[0]} was "
                "written: records missing from the end; not continuing the chain"
            )

    def _cut_torn_final_line(self, path: Path) -> dict[str, Any] | None:
        """Truncate a final line that a crash left incomplete.

        Only the final line can be torn: every earlier one was fdatasync'd
        before the next write began. A final line that fails to parse or whose
        own hash is wrong is torn; anything wrong before it is corruption.
        """
        data, base = _read_tail(path, 2)
        lines, fragment = _split_lines(data, base)
        cut_at: int | None = None
        reason = ""
        if fragment is not None:
            cut_at, reason = fragment[0], "unterminated final line"
        elif lines:
            offset, raw = lines[-1]
            try:
                parse_line(raw)
            except ValueError as exc:
                cut_at, reason = offset, f"unreadable final line: {exc}"
        if cut_at is None:
            return None
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(cut_at)
            discarded = f.read(MAX_DISCARDED_EVIDENCE)
        # Refuse if the line before the cut is bad as well: that is not a torn write.
        before = [ln for ln in lines if ln[0] < cut_at]
        if before:
            try:
                parse_line(before[-1][1])
            except ValueError as exc:
                raise AuditCorruptError(
                    f"{path.name}: bad record before the final line ({exc}); "
                    "not repairing, run `igrtctl audit verify`"
                ) from None
        # Keep the bytes durably *before* cutting them: a crash between the
        # cut and the recovery record must not lose the evidence.
        evidence = self.directory / f"discarded-{path.stem}-{cut_at}.bin"
        fd = os.open(evidence, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, discarded)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.directory)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, cut_at)
            os.fsync(fd)
        finally:
            os.close(fd)
        return {
            "segment": path.name,
            "offset": cut_at,
            "reason": reason,
            "discarded_bytes": size - cut_at,
            "discarded_b64": base64.b64encode(discarded).decode("ascii"),
            "evidence_file": evidence.name,
        }

    def _last_record(self, path: Path) -> AuditRecord | None:
        """The last record of a segment, checked against the one before it."""
        data, base = _read_tail(path, 2)
        lines, fragment = _split_lines(data, base)
        if fragment is not None:
            raise AuditCorruptError(f"{path.name}: unterminated line in a closed segment")
        if not lines:
            return None
        try:
            last = parse_line(lines[-1][1])
            if len(lines) >= 2:
                prev = parse_line(lines[-2][1])
                if last.seq != prev.seq + 1 or last.prev_hash != prev.hash:
                    raise ValueError(f"seq {last.seq} does not follow seq {prev.seq}")
        except ValueError as exc:
            raise AuditCorruptError(
                f"{path.name}: tail of the log is inconsistent ({exc}); "
                "not continuing the chain, run `igrtctl audit verify`"
            ) from None
        return last

    # -- reading (delegates to the read-only module functions)

    def records(
        self,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        event: str | None = None,
    ) -> Iterator[AuditRecord]:
        return read_records(self.directory, since=since, until=until, actor=actor, event=event)

    def tail(self, n: int) -> list[AuditRecord]:
        return tail_records(self.directory, n)
