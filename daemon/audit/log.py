"""The writer: `AuditLog` appends durably, and on open recovers a torn tail.

Every record it writes is built and hashed by `record`, and every line it
reads back while recovering is checked by `record.parse_line`, the code the
verifier uses too.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from daemon.audit.errors import AuditCorruptError, AuditError, AuditLockedError, AuditWriteError
from daemon.audit.reading import read_records, tail_records
from daemon.audit.record import (
    FORMAT_VERSION,
    GENESIS_HASH,
    AuditRecord,
    iso_utc,
    jsonable,
    parse_line,
    record_hash,
)
from daemon.audit.segments import (
    HEAD_FILE,
    fsync_dir,
    list_segments,
    read_tail,
    segment_name,
    split_lines,
    write_all,
)
from daemon.audit.verify import read_head_anchor
from daemon.jsontypes import JsonObject

# The logger keeps the name it had before the package split, so logging
# configuration that names "daemon.audit" still applies.
log = logging.getLogger("daemon.audit")

LOCK_FILE = ".lock"
# Evidence kept from a torn final line (a record is ~300 bytes).
MAX_DISCARDED_EVIDENCE = 64 * 1024


class AuditLog:
    """The writer. One per directory (an flock keeps a second igrtd out)."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool = True,
        deferred_sync: bool = False,
        segment_max_records: int = 100_000,
    ) -> None:
        if segment_max_records < 1:
            raise ValueError(f"segment_max_records {segment_max_records} must be >= 1")
        self.directory = Path(directory)
        self.fsync = fsync
        # Deferred: append() only writes; sync() (igrtd's group commit thread,
        # daemon/group_commit.py) makes everything written so far durable.
        self.deferred_sync = deferred_sync
        self._synced_seq = 0
        # Told after each append (deferred_sync): igrtd's group commit then syncs.
        self.on_write: Callable[[], None] | None = None
        self.segment_max_records = segment_max_records
        self.recoveries: list[JsonObject] = []  # what open() had to repair, for logging
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
                    if self.deferred_sync and self.fsync and self._fd is not None:
                        os.fdatasync(self._fd)
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
        """(seq, hash) of the last record written (durable at once, or with deferred_sync
        at the next sync); publish it to anchor the chain."""
        with self._lock:
            return self._seq, self._hash

    def checkpoint(self) -> None:
        """Persist the head anchor now (also done on rotation and close)."""
        with self._lock:
            self._require_writable()
            if self.deferred_sync and self.fsync and self._fd is not None:
                os.fdatasync(self._fd)  # the anchor names only durable records
            self._write_head_anchor()

    # -- appending

    def append(self, event: str, actor: str, **details: object) -> AuditRecord:
        """Write one record and make it durable before returning it.

        `details` may hold poses, enums, models and the like; `jsonable`
        turns each into plain JSON, so what is hashed is what is stored.
        """
        if not isinstance(event, str) or not event:
            raise ValueError(f"audit event must be a non-empty string, got {event!r}")
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"audit actor must be a non-empty string, got {actor!r}")
        # Keyword names are already str: the same result as jsonable(details).
        clean_details: JsonObject = {key: jsonable(value) for key, value in details.items()}
        with self._lock:
            self._require_writable()
            ts = time.time()
            seq, prev_hash = self._seq + 1, self._hash
            fields: JsonObject = {
                "seq": seq,
                "time": iso_utc(ts),
                "event": event,
                "actor": actor,
                "details": clean_details,
                "ts": ts,
                "prev_hash": prev_hash,
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
                write_all(self._fd, line)
                # A new segment's first record is synced at once even when deferred:
                # the head anchor written below must name only durable records.
                if self.fsync and (rotating or not self.deferred_sync):
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
            record = AuditRecord(seq, ts, event, actor, clean_details, prev_hash, digest)
        if self.on_write is not None:
            self.on_write()
        return record

    def sync(self) -> None:
        """Make every record written so far durable (deferred_sync mode; any thread).

        The fdatasync runs outside the writer's lock, on a duplicate of the
        segment's descriptor, so appends on the event loop never wait for the
        disk. A failure is sticky, as for a failed write in append().
        """
        with self._lock:
            self._require_writable()
            if self._fd is None or self._seq == self._synced_seq or not self.fsync:
                return
            fd, seq = os.dup(self._fd), self._seq
        try:
            os.fdatasync(fd)
        except OSError as exc:
            with self._lock:
                self._failed = exc
            raise AuditWriteError(f"audit records could not be made durable: {exc}") from exc
        finally:
            os.close(fd)
        with self._lock:
            self._synced_seq = max(self._synced_seq, seq)

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
            if self.deferred_sync and self.fsync:
                os.fdatasync(self._fd)  # the old segment's deferred records first
            os.close(self._fd)
            self._fd = None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(path, flags, 0o640)
        # The new directory entry must be durable too, or a crash could lose
        # a whole segment of "durable" records.
        os.fsync(fd)
        fsync_dir(self.directory)
        self._fd = fd
        self._segment_first = first_seq
        self._segment_path = path
        self._size = os.fstat(fd).st_size

    def _write_head_anchor(self) -> None:
        tmp = self.directory / (HEAD_FILE + ".tmp")
        body = json.dumps({"seq": self._seq, "hash": self._hash, "at": iso_utc(time.time())})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            write_all(fd, body.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / HEAD_FILE)
        fsync_dir(self.directory)

    # -- recovery

    def _recover_tail(self) -> list[JsonObject]:
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
        pending: list[JsonObject] = []
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
        anchor = read_head_anchor(self.directory)
        if anchor is not None and anchor[0] > self._seq:
            raise AuditCorruptError(
                f"audit log ends at seq {self._seq} but {HEAD_FILE} says seq {anchor[0]} was "
                "written: records missing from the end; not continuing the chain"
            )

    def _cut_torn_final_line(self, path: Path) -> JsonObject | None:
        """Truncate a final line that a crash left incomplete.

        Only the final line can be torn: every earlier one was fdatasync'd
        before the next write began. A final line that fails to parse or whose
        own hash is wrong is torn; anything wrong before it is corruption.
        """
        data, base = read_tail(path, 2)
        lines, fragment = split_lines(data, base)
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
            write_all(fd, discarded)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.directory)
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
        data, base = read_tail(path, 2)
        lines, fragment = split_lines(data, base)
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
