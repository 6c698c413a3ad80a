"""Durable QA records of one room: daily and couch-sag results, calibrations, overrides.

One SQLite file (state_dir/qa.sqlite) in WAL mode with synchronous=FULL: a
result, a calibration change or an override is on disk when the call returns
(kill -9 and power loss included). Every row names its room, and every query
asks for the room the store was opened for, so a state directory shared by
mistake never lets one room's QA pass open another room's gate.

igrtd calls these methods in a thread (asyncio.to_thread): a write is an
fsync, and igrtd's event loop supervises motion (daemon/qa_workflow.py).

Calibrations are versioned per room (1, 2, ...). A version is `proposed`,
becomes `active` on a second approval by another person than its proposer
(the one active version is then `superseded`), and an active one ends as
`reverted` when a physicist returns to an earlier approved version (which is
`active` again) or to none. The database itself refuses two active versions.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Self

from daemon.audit import jsonable
from daemon.jsontypes import JsonObject, as_object
from daemon.sqlite_db import immediate, open_versioned

SCHEMA_VERSION = 1
CALIBRATION_STATES = ("proposed", "active", "superseded", "reverted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    room     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    session  TEXT NOT NULL,
    at       REAL NOT NULL,
    by       TEXT NOT NULL,
    profile  TEXT NOT NULL,
    passed   INTEGER NOT NULL CHECK (passed IN (0, 1)),
    aborted  INTEGER NOT NULL CHECK (aborted IN (0, 1)),
    json     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_room ON results (room, kind, at);
CREATE TABLE IF NOT EXISTS calibrations (
    room        TEXT NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    state       TEXT NOT NULL CHECK (state IN ('proposed','active','superseded','reverted')),
    proposed_by TEXT NOT NULL,
    proposed_at REAL NOT NULL,
    approved_by TEXT,
    approved_at REAL,
    ended_by    TEXT,
    ended_at    REAL,
    end_reason  TEXT,
    basis       TEXT NOT NULL,
    json        TEXT NOT NULL,
    PRIMARY KEY (room, version),
    CHECK (approved_by IS NULL OR approved_by <> proposed_by)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_calibration_per_room
    ON calibrations (room) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS overrides (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    room     TEXT NOT NULL,
    at       REAL NOT NULL,
    by       TEXT NOT NULL,
    session  TEXT NOT NULL,
    reason   TEXT NOT NULL
);
"""


class QaStoreError(Exception):
    """The QA store cannot be used or refuses a change; one line fit for a user."""


def _dumps(value: object) -> str:
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"),
                      allow_nan=False)


class QaStore:
    def __init__(self, path: Path, room: str) -> None:
        self.path = Path(path)
        self.room = room
        self._lock = threading.Lock()
        self._db = open_versioned(
            self.path,
            label="QA store",
            error=QaStoreError,
            schema=_SCHEMA,
            schema_version=SCHEMA_VERSION,
            synchronous="FULL",
            foreign_keys=False,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ results
    def add_result(self, kind: str, session: str, by: str, profile: str, passed: bool,
                   aborted: bool, record: JsonObject, at: float | None = None) -> JsonObject:
        """Store one QA result; the record as stored, with its `id` and `at`."""
        at = time.time() if at is None else at
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO results (room, kind, session, at, by, profile, passed, aborted,"
                    " json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.room, kind, session, at, by, profile, int(passed), int(aborted),
                     _dumps(record)))
            except (sqlite3.Error, ValueError) as exc:
                raise QaStoreError(f"QA result not stored: {exc}") from None
            rid = cur.lastrowid
        assert rid is not None
        got = self.result(rid)
        assert got is not None
        return got

    def _result(self, row: sqlite3.Row) -> JsonObject:
        record = as_object(json.loads(row["json"]), f"QA result {row['id']}")
        return {**record, "id": row["id"], "room": row["room"], "kind": row["kind"],
                "session": row["session"], "at": row["at"], "by": row["by"],
                "profile": row["profile"], "passed": bool(row["passed"]),
                "aborted": bool(row["aborted"])}

    def result(self, result_id: int) -> JsonObject | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM results WHERE room = ? AND id = ?",
                                   (self.room, result_id)).fetchone()
        return self._result(row) if row is not None else None

    def results(self, kind: str | None = None, limit: int = 20) -> list[JsonObject]:
        """Newest first."""
        sql = "SELECT * FROM results WHERE room = ?"
        params: tuple[str | int, ...] = (self.room,)
        if kind is not None:
            sql += " AND kind = ?"
            params += (kind,)
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*params, limit)).fetchall()
        return [self._result(r) for r in rows]

    def last_result(self, kind: str, *, passed: bool | None = None,
                    profiles: tuple[str, ...] | None = None) -> JsonObject | None:
        """The newest non-aborted result of `kind` (only passed ones if `passed`), of one of
        `profiles` if given."""
        sql = "SELECT * FROM results WHERE room = ? AND kind = ? AND aborted = 0"
        params: list[str | int] = [self.room, kind]
        if passed is not None:
            sql += " AND passed = ?"
            params.append(int(passed))
        if profiles is not None:
            sql += f" AND profile IN ({','.join('?' * len(profiles))})"
            params += profiles
        sql += " ORDER BY at DESC, id DESC LIMIT 1"
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return self._result(row) if row is not None else None

    # ------------------------------------------------------------ overrides
    def add_override(self, by: str, session: str, reason: str) -> JsonObject:
        at = time.time()
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO overrides (room, at, by, session, reason) VALUES (?, ?, ?, ?, ?)",
                    (self.room, at, by, session, reason))
            except sqlite3.Error as exc:
                raise QaStoreError(f"QA override not stored: {exc}") from None
        return {"id": cur.lastrowid, "at": at, "by": by, "session": session, "reason": reason}

    # ------------------------------------------------------------ calibrations
    def _calibration(self, row: sqlite3.Row) -> JsonObject:
        return {"version": row["version"], "state": row["state"],
                "proposed_by": row["proposed_by"], "proposed_at": row["proposed_at"],
                "approved_by": row["approved_by"], "approved_at": row["approved_at"],
                "ended_by": row["ended_by"], "ended_at": row["ended_at"],
                "end_reason": row["end_reason"],
                "basis": as_object(json.loads(row["basis"]), "calibration basis"),
                "calibration": as_object(json.loads(row["json"]),
                                         f"calibration {row['version']}")}

    def calibration(self, version: int) -> JsonObject | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM calibrations WHERE room = ? AND version = ?",
                                   (self.room, version)).fetchone()
        return self._calibration(row) if row is not None else None

    def calibrations(self, limit: int = 20) -> list[JsonObject]:
        """Newest version first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM calibrations WHERE room = ? "
                                    "ORDER BY version DESC LIMIT ?", (self.room, limit)).fetchall()
        return [self._calibration(r) for r in rows]

    def active_calibration(self) -> JsonObject | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM calibrations WHERE room = ? AND "
                                   "state = 'active'", (self.room,)).fetchone()
        return self._calibration(row) if row is not None else None

    def propose_calibration(self, by: str, calibration: JsonObject,
                            basis: JsonObject) -> JsonObject:
        """A new version, `proposed`; `calibration` gets its `version`."""
        with self._lock:
            try:
                with immediate(self._db):
                    (last,) = self._db.execute(
                        "SELECT COALESCE(MAX(version), 0) FROM calibrations WHERE room = ?",
                        (self.room,)).fetchone()
                    version = int(last) + 1
                    self._db.execute(
                        "INSERT INTO calibrations (room, version, state, proposed_by, "
                        "proposed_at, basis, json) VALUES (?, ?, 'proposed', ?, ?, ?, ?)",
                        (self.room, version, by, time.time(), _dumps(basis),
                         _dumps({**calibration, "version": version})))
            except (sqlite3.Error, ValueError) as exc:
                raise QaStoreError(f"calibration not stored: {exc}") from None
        got = self.calibration(version)
        assert got is not None
        return got

    def approve_calibration(self, version: int, by: str) -> JsonObject:
        """`version` (proposed, proposed by another person) becomes active; the active one
        superseded. QaStoreError naming why otherwise; nothing changes then."""
        with self._lock:
            try:
                with immediate(self._db):
                    row = self._db.execute(
                        "SELECT state, proposed_by FROM calibrations WHERE room = ? AND "
                        "version = ?", (self.room, version)).fetchone()
                    if row is None:
                        raise QaStoreError(f"no calibration version {version} in room "
                                           f"{self.room}")
                    if row["state"] != "proposed":
                        raise QaStoreError(f"calibration version {version} is {row['state']}, "
                                           "not proposed")
                    if row["proposed_by"] == by:
                        raise QaStoreError(f"calibration version {version} was proposed by "
                                           f"{by}: the second approval must come from another "
                                           "person")
                    now = time.time()
                    self._db.execute(
                        "UPDATE calibrations SET state = 'superseded', ended_by = ?, "
                        "ended_at = ?, end_reason = ? WHERE room = ? AND state = 'active'",
                        (by, now, f"superseded by version {version}", self.room))
                    self._db.execute(
                        "UPDATE calibrations SET state = 'active', approved_by = ?, "
                        "approved_at = ? WHERE room = ? AND version = ?",
                        (by, now, self.room, version))
            except sqlite3.Error as exc:
                raise QaStoreError(f"calibration not approved: {exc}") from None
        got = self.calibration(version)
        assert got is not None
        return got

    def revert_calibration(self, version: int, by: str, reason: str) -> JsonObject | None:
        """Return to `version` (an approved one: superseded or reverted) or, 0, to none: the
        active one is `reverted`. The calibration now active (None: none)."""
        with self._lock:
            try:
                with immediate(self._db):
                    active = self._db.execute(
                        "SELECT version FROM calibrations WHERE room = ? AND state = 'active'",
                        (self.room,)).fetchone()
                    if version:
                        row = self._db.execute(
                            "SELECT state, approved_by FROM calibrations WHERE room = ? AND "
                            "version = ?", (self.room, version)).fetchone()
                        if row is None:
                            raise QaStoreError(f"no calibration version {version} in room "
                                               f"{self.room}")
                        if row["approved_by"] is None:
                            raise QaStoreError(f"calibration version {version} was never "
                                               "approved; it cannot be made active by a revert")
                        if row["state"] == "active":
                            raise QaStoreError(f"calibration version {version} is already "
                                               "active")
                    elif active is None:
                        raise QaStoreError("no calibration is active: nothing to revert")
                    now = time.time()
                    self._db.execute(
                        "UPDATE calibrations SET state = 'reverted', ended_by = ?, ended_at = ?,"
                        " end_reason = ? WHERE room = ? AND state = 'active'",
                        (by, now, reason, self.room))
                    if version:
                        self._db.execute(
                            "UPDATE calibrations SET state = 'active', ended_by = NULL, "
                            "ended_at = NULL, end_reason = NULL WHERE room = ? AND version = ?",
                            (self.room, version))
            except sqlite3.Error as exc:
                raise QaStoreError(f"calibration not reverted: {exc}") from None
        return self.active_calibration()
