"""igrt's store of received DICOM instances: the files, durable, and their index.

Each accepted instance is written as the Part 10 file the peer sent (no
re-encoding: what is kept is what was received), to a temporary name, synced,
renamed into place and its directory synced, and only then indexed: a crash
at any point leaves either no trace (a temporary file, removed at the next
open) or a complete file, never a partial one under its real name. The index
(SQLite, synchronous=FULL) says where each instance is, by patient, study,
series and frame of reference.

Layout under the storage directory: `series/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`
and `index.sqlite`.

A SOP Instance UID names one instance for ever: the same bytes again are
accepted and change nothing (a resend after a lost response); other bytes
under a stored UID are refused. A series belongs to one patient, study and
frame of reference: an instance that would mix them is refused, so nothing
downstream ever meets a mixed series.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.audit.segments import fsync_dir, write_all
from imaging.dicom_instances import InstanceFacts
from imaging.dicom_safe import DicomFileError, one_line, read_dataset
from imaging.dicom_series import SeriesGeometry, SliceGeometry, check_series

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    frame_of_reference_uid TEXT,
    instance_number INTEGER,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_patient ON instances(patient_id);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_for ON instances(frame_of_reference_uid);
CREATE INDEX IF NOT EXISTS instances_received ON instances(received_at);
-- When a sender last released, in order, an association that stored instances of
-- the series: to the sender the series was sent (daemon/daily_series.py).
CREATE TABLE IF NOT EXISTS series_sent (
    series_uid TEXT PRIMARY KEY,
    sent_at REAL NOT NULL
);
"""


class ArchiveError(Exception):
    """The archive cannot be used or cannot keep an instance (one line)."""


class Conflict(Exception):
    """The instance contradicts what is stored (one line)."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    facts: InstanceFacts
    path: Path
    size: int
    sha256: str
    calling_ae: str
    received_at: float


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_uid: str
    modality: str
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str | None
    instances: int
    first_received_at: float = 0.0
    last_received_at: float = 0.0
    sent_at: float | None = None  # the sender's association released after it


@dataclass(frozen=True, slots=True)
class IndexedInstance:
    sop_instance_uid: str
    modality: str
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    path: Path


class DicomArchive:
    """Safe to use from several threads (pynetdicom serves associations in threads)."""

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        """`read_only`: a reader beside the running service (igrtctl, igrtd): it
        creates nothing and changes nothing."""
        self.directory = Path(directory)
        self._lock = threading.Lock()
        index = self.directory / "index.sqlite"
        try:
            if read_only:
                if not index.is_file():
                    raise ArchiveError(f"no DICOM archive in {self.directory} (nothing stored "
                                       "yet, or another directory)")
                self._db = sqlite3.connect(f"{index.absolute().as_uri()}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False,
                                           timeout=10.0)
                self._db.execute("SELECT COUNT(*) FROM instances").fetchone()
                # An index written by an older igrt-dicomd has no series_sent yet.
                self._has_sent_table = self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                    "name = 'series_sent'").fetchone() is not None
                return
            (self.directory / "series").mkdir(mode=0o750, parents=True, exist_ok=True)
            self._db = sqlite3.connect(index, isolation_level=None,
                                       check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._has_sent_table = True
        except (OSError, sqlite3.Error) as exc:
            raise ArchiveError(f"cannot open the DICOM archive in {self.directory}: {exc}") \
                from None
        self._remove_leftovers()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _remove_leftovers(self) -> None:
        """Temporary files of writes a crash interrupted: never indexed, never used."""
        for tmp in (self.directory / "series").glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ write
    def keep(self, facts: InstanceFacts, part10: bytes, calling_ae: str) -> StoredInstance:
        """Make the instance durable and indexed; Conflict if it contradicts the store;
        ArchiveError if the disk refuses."""
        digest = hashlib.sha256(part10).hexdigest()
        with self._lock:
            existing = self._db.execute(
                "SELECT sha256, path, size, calling_ae, received_at FROM instances "
                "WHERE sop_instance_uid = ?", (facts.sop_instance_uid,)).fetchone()
            if existing is not None:
                if existing[0] != digest:
                    raise Conflict(f"SOP Instance UID {facts.sop_instance_uid} is already stored "
                                   "with other content; a UID names one instance")
                return StoredInstance(facts, Path(existing[1]), existing[2], existing[0],
                                      existing[3], existing[4])
            self._check_series(facts)
            series_dir = self.directory / "series" / facts.series_uid
            path = series_dir / f"{facts.sop_instance_uid}.dcm"
            try:
                series_dir.mkdir(mode=0o750, exist_ok=True)
                _write_durably(path, part10)
            except OSError as exc:
                raise ArchiveError(f"cannot store instance {facts.sop_instance_uid}: "
                                   f"{exc.strerror or exc}") from None
            now = time.time()
            try:
                self._db.execute(
                    "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (facts.sop_instance_uid, facts.sop_class_uid, facts.modality,
                     facts.patient_id, facts.patient_name, facts.study_uid, facts.series_uid,
                     facts.frame_of_reference_uid, facts.instance_number, str(path),
                     len(part10), digest, calling_ae, now))
            except sqlite3.Error as exc:
                raise ArchiveError(f"cannot index instance {facts.sop_instance_uid}: {exc}") \
                    from None
            return StoredInstance(facts, path, len(part10), digest, calling_ae, now)

    def _check_series(self, facts: InstanceFacts) -> None:
        row = self._db.execute(
            "SELECT patient_id, study_uid, frame_of_reference_uid, modality FROM instances "
            "WHERE series_uid = ? LIMIT 1", (facts.series_uid,)).fetchone()
        if row is None:
            return
        for name, stored, got in (("PatientID", row[0], facts.patient_id),
                                  ("StudyInstanceUID", row[1], facts.study_uid),
                                  ("FrameOfReferenceUID", row[2], facts.frame_of_reference_uid),
                                  ("Modality", row[3], facts.modality)):
            if stored != got:
                raise Conflict(f"series {facts.series_uid} is stored with {name} {stored!r}; "
                               f"this instance has {got!r} (a series is never mixed)")

    # ------------------------------------------------------------------- read
    def series(self, patient_id: str | None = None, *,
               since: float | None = None) -> list[SeriesSummary]:
        """Every stored series (of `patient_id`; with an instance received at or after
        `since`), in the order they began to arrive."""
        sent = ("(SELECT sent_at FROM series_sent WHERE series_uid = i.series_uid)"
                if self._has_sent_table else "NULL")
        query = ("SELECT i.series_uid, i.modality, i.patient_id, i.study_uid, "
                 "i.frame_of_reference_uid, COUNT(*), MIN(i.received_at), "
                 f"MAX(i.received_at), {sent} FROM instances i")
        where: list[str] = []
        args: list[str | float] = []
        if patient_id is not None:
            where.append("i.patient_id = ?")
            args.append(patient_id)
        if since is not None:
            where.append("i.series_uid IN (SELECT series_uid FROM instances "
                         "WHERE received_at >= ?)")
            args.append(since)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " GROUP BY i.series_uid ORDER BY MIN(i.received_at)"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [SeriesSummary(*row) for row in rows]

    def mark_sent(self, series_uids: list[str]) -> None:
        """The sender released, in order, an association that stored these series."""
        now = time.time()
        with self._lock:
            try:
                self._db.executemany(
                    "INSERT INTO series_sent VALUES (?, ?) ON CONFLICT(series_uid) "
                    "DO UPDATE SET sent_at = excluded.sent_at",
                    [(uid, now) for uid in series_uids])
            except sqlite3.Error as exc:
                raise ArchiveError(f"cannot mark series sent: {exc}") from None

    def find_instance(self, sop_instance_uid: str) -> IndexedInstance | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sop_instance_uid, modality, patient_id, study_uid, series_uid, "
                "frame_of_reference_uid, path FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,)).fetchone()
        if row is None:
            return None
        return IndexedInstance(row[0], row[1], row[2], row[3], row[4], row[5], Path(row[6]))

    def instance_paths(self, series_uid: str) -> list[Path]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path FROM instances WHERE series_uid = ? "
                "ORDER BY instance_number, sop_instance_uid", (series_uid,)).fetchall()
        return [Path(r[0]) for r in rows]

    def series_geometry(self, series_uid: str) -> SeriesGeometry:
        """The volume a stored CT series makes (imaging/dicom_series.py), read from
        its files' headers; SeriesRefused when it is not one regular volume,
        ArchiveError when a stored file cannot be read."""
        slices: list[SliceGeometry] = []
        for path in self.instance_paths(series_uid):
            try:
                ds = read_dataset(path, stop_before_pixels=True)
            except DicomFileError as exc:
                raise ArchiveError(str(exc)) from None
            try:
                slices.append(SliceGeometry(
                    str(ds.SOPInstanceUID),
                    tuple(float(v) for v in ds.ImagePositionPatient),  # type: ignore[arg-type]
                    tuple(float(v) for v in ds.ImageOrientationPatient),  # type: ignore[arg-type]
                    tuple(float(v) for v in ds.PixelSpacing),  # type: ignore[arg-type]
                    int(ds.Rows), int(ds.Columns)))
            except (AttributeError, TypeError, ValueError) as exc:
                raise ArchiveError(f"stored instance {path.name} is not a CT slice: "
                                   f"{one_line(str(exc))}") from None
        return check_series(slices)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
