"""Persistent apply-once state: proposals, confirmations, moves, seen JWT ids.

One SQLite file in WAL mode with synchronous=FULL, so every committed
transaction survives kill -9 and power loss. igrtd opens it with
`deferred_sync`: a commit then only writes the WAL (synchronous=NORMAL) and
its group commit thread (daemon/group_commit.py) calls `sync()`, which
fdatasyncs the WAL - the sync SQLite itself does at FULL - for every commit
so far at once, off the event loop; a GO waits for that sync. Checkpoints
move from the committing connection to `sync()` too. The daemon claims a move
(`claim_move`, committed durably) *before* it sends GO: after a crash the
claim is still there, so the move is never sent again; `unfinished_moves`
lists what a crash interrupted so startup can mark it `interrupted` after
reconciling with the couch's actual pose (R-IDEMP).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import NoReturn, Self, TypeAlias

from daemon.audit import jsonable
from daemon.jsontypes import JsonMapping, JsonObject, as_object
from daemon.sqlite_db import open_versioned

log = logging.getLogger(__name__)

MOVE_STATES = frozenset({"sending", "sent", "completed", "interrupted", "stopped", "failed"})
IN_FLIGHT = ("sending", "sent")
TERMINAL = frozenset({"completed", "interrupted", "stopped", "failed"})
# A jti stays remembered this long past its exp, so a token whose exp is
# accepted thanks to clock-skew leeway is still recognised as a replay.
JTI_LEEWAY_S = 300.0
# Expired ids are deleted at most this often (remember_jti).
JTI_PRUNE_INTERVAL_S = 60.0
SCHEMA_VERSION = 1
# What the store binds into its SQL: ids, times, states and JSON text.
_SqlParam: TypeAlias = "str | int | float | None"

# Is there already a move of this confirmation, or a completed or in-flight one of its
# proposal? (claim_move; by primary key and by moves_by_proposal.)
CLAIM_CLASH_QUERY = (
    "SELECT 1 FROM moves WHERE confirmation_id = ? OR (proposal_id = ? AND "
    "state IN ('completed', 'sending', 'sent')) LIMIT 1")
# The claim: a 'sending' move inserted unless that query finds one.
CLAIM_MOVE = (
    "INSERT INTO moves (confirmation_id, proposal_id, state, target, started_at) "
    "SELECT ?, ?, 'sending', ?, ? WHERE NOT EXISTS (" + CLAIM_CLASH_QUERY + ")")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS proposals (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    json        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    confirmation_id TEXT PRIMARY KEY,
    proposal_id     TEXT NOT NULL,
    user            TEXT NOT NULL,
    at              REAL NOT NULL,
    second_approver TEXT
);
CREATE TABLE IF NOT EXISTS moves (
    confirmation_id TEXT PRIMARY KEY,
    proposal_id     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN
                        ('sending','sent','completed','interrupted','stopped','failed')),
    target          TEXT NOT NULL,
    started_at      REAL NOT NULL,
    ended_at        REAL,
    detail          TEXT
);
-- The database itself refuses a second completed move, or two moves in
-- flight, for one proposal, whatever the code above it does.
CREATE UNIQUE INDEX IF NOT EXISTS one_completed_move_per_proposal
    ON moves (proposal_id) WHERE state = 'completed';
CREATE UNIQUE INDEX IF NOT EXISTS one_move_in_flight_per_proposal
    ON moves (proposal_id) WHERE state IN ('sending', 'sent');
CREATE INDEX IF NOT EXISTS moves_by_state ON moves (state);
-- claim_move asks for a proposal's moves in given states on the way to every GO: by
-- this index a lookup, not a walk over every completed move the room ever made (the
-- claim took 0.1 ms more for each thousand moves stored).
CREATE INDEX IF NOT EXISTS moves_by_proposal ON moves (proposal_id, state);
CREATE TABLE IF NOT EXISTS jti (
    jti TEXT PRIMARY KEY,
    exp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jti_by_exp ON jti (exp);
"""


class StoreError(Exception):
    """The state store cannot be used; the message is one line fit for a user."""


# With deferred_sync, sync() asks for a checkpoint once this many commits were made
# since the last one: 4-6 MiB of WAL at 16-24 KiB a commit (SQLite's own default
# is 1,000 pages, about 4 MiB).
CHECKPOINT_COMMITS = 256
# A WAL started afresh after a checkpoint keeps its file, up to this size, and is
# written over from its start (journal_size_limit).
WAL_KEPT_BYTES = 8 * 1024 * 1024


class CorrectionStore:
    def __init__(self, path: Path, *, deferred_sync: bool = False) -> None:
        self.path = Path(path)
        self.deferred_sync = deferred_sync
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._checkpointer: sqlite3.Connection | None = None
        self._sync_failed: str | None = None
        # Told after each commit (deferred_sync): igrtd's group commit then syncs.
        self.on_write: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._next_jti_prune = 0.0  # the first command prunes
        self._commits = self._commits_at_checkpoint = 0  # since opening
        # Checkpoints run in a thread of their own, never inside sync(): a 4 MiB
        # checkpoint takes tens of milliseconds, and a GO's barrier waits for the
        # flush that sync() is part of.
        # One worker, started with the first checkpoint; a request while one is
        # queued or running adds nothing (the next sync asks again if needed).
        self._checkpoints = ThreadPoolExecutor(1, thread_name_prefix="igrt-store-checkpoint")
        self._checkpoint_job: Future[None] | None = None
        self._closing = False
        # Per connection: FULL syncs the WAL on every commit.
        # Deferred: this connection (igrtd's event loop) never syncs; sync()
        # fdatasyncs the WAL in the group commit thread, and checkpoints run
        # on their own connection at FULL, which syncs the database before the
        # WAL may be reused. Not NORMAL: NORMAL syncs the WAL header whenever
        # a commit starts the WAL afresh after a checkpoint, an fdatasync on
        # the event loop (milliseconds under disk load; found tracing the
        # confirm path, issue 13). journal_size_limit: that fresh start keeps
        # the file and writes over it from its start, so the fdatasync before a
        # GO writes data into blocks the file already has and commits no file
        # system journal for a grown size, as it did while each fresh start cut
        # the file back to nothing (issue 13, item 6). Checkpoints are asked for
        # by the count of commits, as the file's size no longer tells.
        self._db = open_versioned(
            self.path,
            label="state store",
            error=StoreError,
            schema=_SCHEMA,
            schema_version=SCHEMA_VERSION,
            synchronous="OFF" if deferred_sync else "FULL",
            extra_pragmas=(
                ("wal_autocheckpoint=0", f"journal_size_limit={WAL_KEPT_BYTES}")
                if deferred_sync else ()
            ),
            foreign_keys=True,
        )

    def close(self) -> None:
        if self.deferred_sync and self._sync_failed is None:
            try:
                self.sync()
            except StoreError as exc:
                log.error("%s", exc)
        self._closing = True
        self._checkpoints.shutdown(wait=True)  # a checkpoint under way finishes first
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            self._db.close()

    def sync(self) -> None:
        """Make every commit so far durable (deferred_sync; the group commit thread).

        fdatasync of the WAL file is what SQLite does at each commit under
        synchronous=FULL; here one covers every commit before it. A failure is
        sticky: later writes are refused.
        """
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # nothing committed since the last checkpoint emptied it
        except OSError as exc:
            self._fail_sync(exc)
        commits = self._commits
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self._fail_sync(exc)
        finally:
            os.close(fd)
        if commits - self._commits_at_checkpoint >= CHECKPOINT_COMMITS:
            self._commits_at_checkpoint = commits
            self._request_checkpoint()

    def _request_checkpoint(self) -> None:
        """Have the checkpoint thread copy the WAL into the database (no wait)."""
        job = self._checkpoint_job
        if self._closing or (job is not None and not job.done()):
            return
        self._checkpoint_job = self._checkpoints.submit(self._checkpoint)

    def wait_checkpoint_idle(self, timeout_s: float = 10.0) -> bool:
        """True once no checkpoint is asked for or running (tests)."""
        job = self._checkpoint_job
        return job is None or not wait([job], timeout_s).not_done

    def _fail_sync(self, exc: OSError) -> NoReturn:
        self._sync_failed = f"state store {self.path} could not be made durable: {exc}"
        raise StoreError(self._sync_failed) from exc

    def _checkpoint(self) -> None:
        """Copy the WAL into the database (its own connection: writers go on)."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None,
                                                     check_same_thread=False, timeout=1.0)
                # The database is synced after each checkpoint, before the WAL
                # it copied may be started afresh (the writer connection never syncs).
                self._checkpointer.execute("PRAGMA synchronous=FULL")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # a later checkpoint tries again; nothing is lost
            log.warning("state store checkpoint failed: %s", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers

    def _require_writable(self) -> None:
        if self._sync_failed is not None:
            raise StoreError(f"state store refused: {self._sync_failed}; restart igrtd")

    def _write(self, sql: str, params: tuple[_SqlParam, ...]) -> int:
        self._require_writable()
        with self._lock:
            try:
                rows: int = self._db.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"state store write failed: {exc}") from exc
        self._written()
        return rows

    def _written(self) -> None:
        self._commits += 1  # only counted: a checkpoint a commit late does no harm
        if self.on_write is not None:
            self.on_write()

    def _one(self, sql: str, params: tuple[_SqlParam, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
            return row

    def _all(self, sql: str, params: tuple[_SqlParam, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    @staticmethod
    def _dumps(value: object) -> str:
        return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def _move(row: sqlite3.Row) -> JsonObject:
        return {
            "confirmation_id": row["confirmation_id"],
            "proposal_id": row["proposal_id"],
            "state": row["state"],
            "target": json.loads(row["target"]),
            "started_at": row["started_at"],
            "ended_at": row["ended_at"],
            "detail": json.loads(row["detail"]) if row["detail"] is not None else None,
        }

    # -- proposals and confirmations

    def save_proposal(self, proposal_id: str, record: JsonMapping) -> None:
        """Insert or update a proposal; created_at is kept from the first save."""
        self._write(
            "INSERT INTO proposals (id, created_at, json) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET json = excluded.json",
            (proposal_id, time.time(), self._dumps(record)),
        )

    def get_proposal(self, proposal_id: str) -> JsonObject | None:
        row = self._one("SELECT json FROM proposals WHERE id = ?", (proposal_id,))
        # save_proposal only ever stores an object; anything else is a damaged row.
        return as_object(json.loads(row["json"]), f"proposal {proposal_id}") if row else None

    def record_confirmation(
        self,
        confirmation_id: str,
        proposal_id: str,
        user: str,
        at: float,
        approver: str | None = None,
    ) -> bool:
        """Remember a confirmation; False (and nothing changed) if its id is known."""
        return (
            self._write(
                "INSERT OR IGNORE INTO confirmations "
                "(confirmation_id, proposal_id, user, at, second_approver) VALUES (?, ?, ?, ?, ?)",
                (confirmation_id, proposal_id, user, at, approver),
            )
            == 1
        )

    def get_confirmation(self, confirmation_id: str) -> JsonObject | None:
        row = self._one("SELECT * FROM confirmations WHERE confirmation_id = ?", (confirmation_id,))
        return dict(row) if row else None

    # -- moves

    def claim_move(self, confirmation_id: str, proposal_id: str, target: JsonMapping) -> bool:
        """Durably record a move as 'sending' before GO is sent.

        False, with nothing written, if this confirmation already has a move
        (in any state), or the proposal already has a completed move, or
        another move of the proposal is still in flight.
        """
        self._require_writable()
        with self._lock:
            try:
                # One statement, so one transaction of its own (autocommit): the
                # clash query and the insert in one step on the way to every GO.
                # BEGIN, SELECT, INSERT and COMMIT as four calls took 40 % longer.
                claimed = self._db.execute(
                    CLAIM_MOVE,
                    (confirmation_id, proposal_id, self._dumps(target), time.time(),
                     confirmation_id, proposal_id),
                ).rowcount == 1
            except sqlite3.IntegrityError:
                return False  # the unique indexes: the clash the query looks for
            except sqlite3.Error as exc:
                raise StoreError(f"state store write failed: {exc}") from exc
        if not claimed:
            return False
        self._written()
        return True

    def finish_move(
        self, confirmation_id: str, state: str, detail: JsonMapping | None = None
    ) -> bool:
        """Advance a move: 'sent' from 'sending', or a terminal state from either.

        Terminal states are final: a later call returns False, logs, and
        changes nothing (the first outcome recorded is the one that happened).
        """
        if state not in MOVE_STATES or state == "sending":
            raise ValueError(f"move state {state!r} not one of {sorted(MOVE_STATES - {'sending'})}")
        allowed_from = ("sending",) if state == "sent" else IN_FLIGHT
        ended = time.time() if state in TERMINAL else None
        marks = ",".join("?" * len(allowed_from))
        changed = self._write(
            f"UPDATE moves SET state = ?, ended_at = COALESCE(?, ended_at), "
            f"detail = COALESCE(?, detail) WHERE confirmation_id = ? AND state IN ({marks})",
            (
                state,
                ended,
                None if detail is None else self._dumps(detail),
                confirmation_id,
                *allowed_from,
            ),
        )
        if changed != 1:
            current = self.move_for_confirmation(confirmation_id)
            log.warning(
                "move %s not changed to %s: it is %s",
                confirmation_id,
                state,
                current["state"] if current else "unknown",
            )
            return False
        return True

    def recover_claim(self, confirmation_id: str, proposal_id: str, target: JsonMapping,
                      claimed_at: float, detail: JsonMapping) -> bool:
        """A claim the audit log holds and this store lost (a power loss between
        the audit log's sync and the WAL's: daemon/claim_recovery.py), stored as an
        interrupted move: it is never sent again. False, nothing changed, if the
        confirmation already has a move."""
        return self._write(
            "INSERT OR IGNORE INTO moves (confirmation_id, proposal_id, state, target, "
            "started_at, ended_at, detail) VALUES (?, ?, 'interrupted', ?, ?, ?, ?)",
            (confirmation_id, proposal_id, self._dumps(target), claimed_at, time.time(),
             self._dumps(detail)),
        ) == 1

    def mark_interrupted(self, confirmation_id: str, detail: JsonMapping | None = None) -> bool:
        return self.finish_move(confirmation_id, "interrupted", detail)

    def proposal_completed(self, proposal_id: str) -> bool:
        return (
            self._one(
                "SELECT 1 FROM moves WHERE proposal_id = ? AND state = 'completed'", (proposal_id,)
            )
            is not None
        )

    def move_for_confirmation(self, confirmation_id: str) -> JsonObject | None:
        row = self._one("SELECT * FROM moves WHERE confirmation_id = ?", (confirmation_id,))
        return self._move(row) if row else None

    def moves_for_proposal(self, proposal_id: str) -> list[JsonObject]:
        rows = self._all(
            "SELECT * FROM moves WHERE proposal_id = ? ORDER BY started_at", (proposal_id,)
        )
        return [self._move(r) for r in rows]

    def unfinished_moves(self) -> list[JsonObject]:
        """Moves left 'sending' or 'sent' by a crash, oldest first."""
        rows = self._all(
            "SELECT * FROM moves WHERE state IN ('sending', 'sent') ORDER BY started_at"
        )
        return [self._move(r) for r in rows]

    # -- replay cache for signed commands

    def remember_jtis(self, ids: list[tuple[str, float]]) -> int:
        """Remember many (jti, exp) at once, in one transaction (start-up recovery:
        daemon/claim_recovery.py); how many were not known."""
        if not ids:
            return 0
        self._require_writable()
        with self._lock:
            try:
                before = self._db.total_changes
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR IGNORE INTO jti (jti, exp) VALUES (?, ?)", ids)
                self._db.execute("COMMIT")
                added = self._db.total_changes - before
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"state store write failed: {exc}") from exc
        self._written()
        return added

    def remember_jti(self, jti: str, exp: float, *, now: float | None = None) -> bool:
        """True the first time a token id is seen, False for a replay.

        Entries are pruned JTI_LEEWAY_S after their exp; the caller rejects
        expired tokens before asking, so a pruned id cannot be replayed.
        """
        now = time.time() if now is None else now
        self._require_writable()
        with self._lock:
            try:
                # One statement, its own transaction, on the way to every console
                # command; expired ids are pruned once a minute, not at every command
                # (a DELETE in each command's transaction doubled its cost). An id kept
                # longer is only remembered longer.
                fresh = self._db.execute(
                    "INSERT OR IGNORE INTO jti (jti, exp) VALUES (?, ?)", (jti, exp)
                ).rowcount == 1
                if now >= self._next_jti_prune:
                    self._db.execute("DELETE FROM jti WHERE exp < ?", (now - JTI_LEEWAY_S,))
                    self._next_jti_prune = now + JTI_PRUNE_INTERVAL_S
            except sqlite3.Error as exc:
                raise StoreError(f"state store write failed: {exc}") from exc
        self._written()
        return fresh
