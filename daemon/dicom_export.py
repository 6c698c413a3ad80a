"""igrt-dicomd's export queue to record-and-verify (docs/dicom.md, "Export to
record-and-verify").

igrtd drops each verified correction's REG into the outbox (daemon/dicom_outbox.py);
this module takes it from there to every peer with role `export`:

1. A file in the outbox is checked (a DICOM Spatial Registration written by
   igrt, named after its SOP Instance UID, uncompressed, passing the storage
   rules of imaging/dicom_instances.py). Anything else is moved to
   `outbox/refused/` with a one-line audited reason and never sent.
2. An accepted file is recorded in the queue (`exports.sqlite`, WAL,
   synchronous=FULL), one row per export peer keyed by SOP Instance UID, with
   the file's SHA-256, and only then moved to `exports/<UID>.dcm`. A UID
   already queued with other content is refused: one UID names one instance.
3. Each due row is sent by C-STORE (drivers/dicom_scu.py) from that file,
   after its SHA-256 is checked again (bytes changed on disk are never sent).
   A success (or warning) status is committed durably at once and the row is
   never offered again; anything else counts a failure and schedules the next
   attempt after an exponential back-off (dicom.export_retry_initial_s,
   doubled per failure, at most dicom.export_retry_max_s), for ever: an
   export is never dropped, and `igrtctl dicom status` says why it fails.

Every attempt, success, failure and refusal is in the service's audit log.

The one window in which an instance goes out twice: the peer answered success
and the process died before the commit that follows (microseconds). The row
is still pending after the restart, and the same file (same bytes, same UID)
is offered again, which a receiver treats as a duplicate of what it has. The
audit log shows it as a `dicom.export_attempt` with no outcome after it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from daemon.audit.segments import fsync_dir
from daemon.config_dicom import DicomConfig
from daemon.dicom_outbox import outbox_dir
from drivers.dicom_scu import StoreAnswer, StoreTarget
from imaging.dicom_instances import SPATIAL_REGISTRATION, InstanceRefused, check_instance
from imaging.dicom_safe import DicomFileError, one_line, read_dataset

log = logging.getLogger("igrt.dicom")

EXPORTS = "exports"
QUEUE_FILE = "exports.sqlite"
# How often the outbox is looked at. igrtd's REG waits at most this long before
# it is taken; a directory listing this often costs nothing worth counting.
OUTBOX_POLL_S = 0.2
# Uncompressed only, as the storage service: what every R&V system accepts.
_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_MAX_BACKOFF_DOUBLINGS = 40  # 2**40 x the initial wait is past any configurable maximum

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    sop_instance_uid TEXT NOT NULL,
    peer_ae TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent')),
    attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    queued_at REAL NOT NULL,
    sent_at REAL,
    PRIMARY KEY (sop_instance_uid, peer_ae)
);
"""


class QueueError(Exception):
    """The export queue cannot be opened or written (one line)."""


def retry_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1, 2, ...)."""
    doublings = min(max(failures - 1, 0), _MAX_BACKOFF_DOUBLINGS)
    return float(min(max_s, initial_s * 2.0 ** doublings))


@dataclass(frozen=True, slots=True)
class QueuedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ExportRow:
    sop_instance_uid: str
    peer_ae: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    path: Path
    size: int
    sha256: str
    state: str  # pending | sent
    attempts: int  # failed attempts so far
    next_attempt_at: float
    last_error: str | None
    queued_at: float
    sent_at: float | None

    @property
    def shown_state(self) -> str:
        """sent; pending (not tried yet); failing (tried, and why in last_error)."""
        if self.state == "sent":
            return "sent"
        return "failing" if self.attempts else "pending"


_COLUMNS = ("sop_instance_uid, peer_ae, sop_class_uid, transfer_syntax_uid, patient_id, path, "
            "size, sha256, state, attempts, next_attempt_at, last_error, queued_at, sent_at")


def _row(r: Any) -> ExportRow:  # a row as sqlite3 gives it
    return ExportRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), Path(str(r[5])),
                     int(r[6]), str(r[7]), str(r[8]), int(r[9]), float(r[10]),
                     None if r[11] is None else str(r[11]), float(r[12]),
                     None if r[13] is None else float(r[13]))


class ExportQueue:
    """The durable state of every export: one row per (SOP Instance UID, peer)."""

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        path = Path(directory) / QUEUE_FILE
        self.path = path
        self._lock = threading.Lock()
        try:
            if read_only:
                self._db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False,
                                           timeout=10.0)
                self._db.execute("SELECT COUNT(*) FROM exports").fetchone()
                return
            Path(directory).mkdir(mode=0o750, parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise QueueError(f"cannot open the export queue {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            with self._lock:
                self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise QueueError(f"cannot write the export queue {self.path}: {exc}") from None

    def content_of(self, sop_instance_uid: str) -> str | None:
        """The SHA-256 queued under this UID, or None if never queued."""
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM exports WHERE sop_instance_uid = ? "
                                   "LIMIT 1", (sop_instance_uid,)).fetchone()
        return None if row is None else str(row[0])

    def enqueue(self, item: QueuedInstance, path: Path, peers: list[str], now: float) -> None:
        """A pending row for each peer that has none yet for this UID (one transaction)."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for peer in peers:
                        self._db.execute(
                            f"INSERT OR IGNORE INTO exports ({_COLUMNS}) VALUES "
                            "(?,?,?,?,?,?,?,?,'pending',0,?,NULL,?,NULL)",
                            (item.sop_instance_uid, peer, item.sop_class_uid,
                             item.transfer_syntax_uid, item.patient_id, str(path), item.size,
                             item.sha256, now, now))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise QueueError(f"cannot write the export queue {self.path}: {exc}") from None

    def due(self, now: float, peers: list[str]) -> list[ExportRow]:
        if not peers:
            return []
        marks = ",".join("?" * len(peers))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM exports WHERE state = 'pending' AND "
                f"next_attempt_at <= ? AND peer_ae IN ({marks}) ORDER BY queued_at, "
                "sop_instance_uid, peer_ae", (now, *peers)).fetchall()
        return [_row(r) for r in rows]

    def next_due(self, peers: list[str]) -> float | None:
        if not peers:
            return None
        marks = ",".join("?" * len(peers))
        with self._lock:
            row = self._db.execute(
                f"SELECT MIN(next_attempt_at) FROM exports WHERE state = 'pending' AND "
                f"peer_ae IN ({marks})", tuple(peers)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def mark_sent(self, sop_instance_uid: str, peer: str, now: float) -> None:
        self._write("UPDATE exports SET state = 'sent', sent_at = ?, last_error = NULL "
                    "WHERE sop_instance_uid = ? AND peer_ae = ? AND state = 'pending'",
                    (now, sop_instance_uid, peer))

    def mark_failed(self, sop_instance_uid: str, peer: str, reason: str,
                    next_attempt_at: float) -> None:
        self._write("UPDATE exports SET attempts = attempts + 1, last_error = ?, "
                    "next_attempt_at = ? WHERE sop_instance_uid = ? AND peer_ae = ? "
                    "AND state = 'pending'",
                    (reason, next_attempt_at, sop_instance_uid, peer))

    def rows(self) -> list[ExportRow]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM exports "
                                    "ORDER BY queued_at, sop_instance_uid, peer_ae").fetchall()
        return [_row(r) for r in rows]


class InstanceSender(Protocol):
    """One C-STORE of one file (drivers.dicom_scu.StoreScu; a fake in the rule tests)."""

    def store(self, target: StoreTarget, path: Path, sop_class_uid: str,
              transfer_syntax_uid: str) -> StoreAnswer: ...


class AuditSink(Protocol):
    def append(self, event: str, actor: str, **details: object) -> object: ...


class OutboxRefused(Exception):
    """A file in the outbox that is not an instance igrt exports (one line)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Exporter:
    """Takes the outbox into the queue and sends what is due (igrt-dicomd's export task).
    Runs in one thread of its own (`run`); `step` is one pass, for the rule tests."""

    def __init__(self, config: DicomConfig, archive_dir: Path, queue: ExportQueue,
                 sender: InstanceSender, audit: AuditSink,
                 clock: Callable[[], float] = time.time) -> None:
        self._targets = {p.ae_title: StoreTarget(p.ae_title, p.host, int(p.port or 0))
                         for p in config.exporters()}
        self._initial_s = config.export_retry_initial_s
        self._max_s = config.export_retry_max_s
        self._max_bytes = config.max_instance_mb * 1024 * 1024
        self.outbox = outbox_dir(archive_dir)
        self.exports = archive_dir / EXPORTS
        self._queue = queue
        self._sender = sender
        self._audit = audit
        self._clock = clock
        self._unmovable: set[str] = set()  # refused files the disk would not move aside

    # --------------------------------------------------------------- outbox
    def _check(self, path: Path) -> tuple[QueuedInstance, bytes]:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise OutboxRefused(f"cannot read it: {exc.strerror or exc}") from None
        if size > self._max_bytes:
            raise OutboxRefused(f"{size} bytes, limit {self._max_bytes} (dicom.max_instance_mb)")
        try:
            data = path.read_bytes()
            ds = read_dataset(path, max_bytes=self._max_bytes)
        except OSError as exc:
            raise OutboxRefused(f"cannot read it: {exc.strerror or exc}") from None
        except DicomFileError as exc:
            raise OutboxRefused(str(exc)) from None
        try:
            facts = check_instance(ds, SPATIAL_REGISTRATION)
        except InstanceRefused as exc:
            raise OutboxRefused(f"not a registration igrt exports: {exc.reason}") from None
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if syntax not in _TRANSFER_SYNTAXES:
            raise OutboxRefused(f"transfer syntax {one_line(syntax, 70)!r} is not an "
                                "uncompressed one")
        if meta is None or str(meta.get("MediaStorageSOPInstanceUID", "")) != \
                facts.sop_instance_uid:
            raise OutboxRefused("its file meta names another SOP Instance UID than its dataset")
        maker = str(ds.get("Manufacturer", "")).strip()
        if maker != "igrt":
            raise OutboxRefused(f"not written by igrt (Manufacturer {one_line(maker, 64)!r})")
        if path.name != f"{facts.sop_instance_uid}.dcm":
            raise OutboxRefused(f"named {one_line(path.name, 80)!r}, but its SOP Instance UID "
                                f"is {facts.sop_instance_uid}")
        item = QueuedInstance(facts.sop_instance_uid, facts.sop_class_uid, syntax,
                              facts.patient_id, len(data), hashlib.sha256(data).hexdigest())
        return item, data

    def _refuse(self, path: Path, reason: str) -> None:
        if path.name in self._unmovable:
            return
        self._audit.append("dicom.export_refused", "system", file=path.name, reason=reason)
        aside = self.outbox / "refused"
        try:
            aside.mkdir(mode=0o750, exist_ok=True)
            dest = aside / path.name
            if dest.exists():
                dest = aside / f"{path.name}.{time.time_ns()}"
            os.replace(path, dest)
            fsync_dir(aside)
            fsync_dir(self.outbox)
        except OSError as exc:
            # Left where it is, never sent; said once, not at every look at the outbox.
            self._unmovable.add(path.name)
            log.error("refused outbox file %s not moved aside: %s", path.name, exc)

    def take_outbox(self) -> int:
        """Queue every acceptable file in the outbox; refuse the others. How many queued."""
        try:
            names = sorted(p for p in self.outbox.iterdir()
                           if p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("cannot list the outbox %s: %s", self.outbox, exc)
            return 0
        queued = 0
        for path in names:
            try:
                item, _ = self._check(path)
            except OutboxRefused as exc:
                self._refuse(path, one_line(str(exc)))
                continue
            known = self._queue.content_of(item.sop_instance_uid)
            if known is not None and known != item.sha256:
                self._refuse(path, f"SOP Instance UID {item.sop_instance_uid} is already queued "
                             "with other content; a UID names one instance")
                continue
            dest = self.exports / f"{item.sop_instance_uid}.dcm"
            # Recorded first, moved second: a crash between the two leaves the file in
            # the outbox, found again with the same content and moved then.
            self._queue.enqueue(item, dest, list(self._targets), self._clock())
            try:
                self.exports.mkdir(mode=0o750, exist_ok=True)
                os.replace(path, dest)
                fsync_dir(self.exports)
                fsync_dir(self.outbox)
            except OSError as exc:
                log.error("outbox file %s not moved to %s: %s", path.name, self.exports, exc)
                continue
            self._audit.append("dicom.export_queued", "system",
                               sop_instance_uid=item.sop_instance_uid,
                               patient_id=item.patient_id, sha256=item.sha256,
                               peers=list(self._targets))
            queued += 1
        return queued

    # ----------------------------------------------------------------- send
    def send_due(self) -> None:
        for row in self._queue.due(self._clock(), list(self._targets)):
            self._send(row)

    def _send(self, row: ExportRow) -> None:
        target = self._targets[row.peer_ae]
        attempt = row.attempts + 1
        ids = {"sop_instance_uid": row.sop_instance_uid, "peer": row.peer_ae,
               "attempt": attempt}
        try:
            same = _sha256(row.path) == row.sha256
        except OSError as exc:
            answer = StoreAnswer(None, f"cannot read {row.path}: {exc.strerror or exc}")
        else:
            if not same:
                answer = StoreAnswer(None, f"{row.path.name} changed on disk since it was "
                                     "queued; not sent")
            else:
                # Before the send: an attempt with no outcome after it in the log is the
                # crash window of the module docstring.
                self._audit.append("dicom.export_attempt", "system", **ids)
                answer = self._store(target, row)
        if answer.category in ("success", "warning"):
            self._queue.mark_sent(row.sop_instance_uid, row.peer_ae, self._clock())
            self._audit.append("dicom.export_sent", "system", patient_id=row.patient_id,
                               status=f"0x{answer.status or 0:04X}", **ids)
            return
        delay = retry_delay(attempt, self._initial_s, self._max_s)
        reason = one_line(answer.reason or f"status 0x{answer.status or 0:04X}")
        self._queue.mark_failed(row.sop_instance_uid, row.peer_ae, reason,
                                self._clock() + delay)
        self._audit.append("dicom.export_failed", "system", reason=reason,
                           next_attempt_in_s=round(delay, 3), **ids)

    def _store(self, target: StoreTarget, row: ExportRow) -> StoreAnswer:
        try:
            return self._sender.store(target, row.path, row.sop_class_uid,
                                      row.transfer_syntax_uid)
        except Exception as exc:  # noqa: BLE001 - one send's fault is a failed attempt, retried
            return StoreAnswer(None, f"unexpected {type(exc).__name__} sending to "
                               f"{target.ae_title}: {one_line(str(exc))}")

    # ------------------------------------------------------------------ run
    def step(self) -> float:
        """One pass; seconds until the next is worth making."""
        self.take_outbox()
        self.send_due()
        wait = OUTBOX_POLL_S
        nxt = self._queue.next_due(list(self._targets))
        if nxt is not None:
            wait = min(wait, max(0.0, nxt - self._clock()))
        return wait

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                wait = self.step()
            except QueueError as exc:
                # The queue's disk refused a write: nothing is sent without its record.
                log.error("%s", exc)
                self._audit.append("dicom.export_queue_error", "system", reason=str(exc))
                wait = max(OUTBOX_POLL_S, self._initial_s)
            stop.wait(wait)


def start_exporter(config: DicomConfig, archive_dir: Path, audit: AuditSink,
                   stop: threading.Event) -> threading.Thread | None:
    """igrt-dicomd's export thread, running until `stop`; None when no peer has role
    `export`. QueueError (one line) when the queue cannot be opened."""
    if not config.exporters():
        return None
    from drivers.dicom_scu import StoreScu

    queue = ExportQueue(archive_dir)
    exporter = Exporter(config, archive_dir, queue, StoreScu(config.ae_title), audit)

    def _run() -> None:
        try:
            exporter.run(stop)
        finally:
            queue.close()

    # A daemon thread: a send under way (up to its 30 s timeouts) does not hold up the
    # service's exit; what it had not recorded is the crash window above.
    thread = threading.Thread(target=_run, name="igrt-dicom-export", daemon=True)
    thread.start()
    return thread
