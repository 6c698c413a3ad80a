"""Opening one of igrtd's versioned SQLite files: WAL journal, schema, version check.

The apply-once state store (daemon/store.py) and the QA store
(daemon/qa_store.py) open their files the same way: create the directory,
connect in autocommit (they issue BEGIN/COMMIT themselves, so a write is
exactly one transaction), insist on WAL, set the per-connection durability
pragmas, refuse a file written by a newer igrt, and create the schema. This
module is that one way. Each store still decides its own durability
(`synchronous`, extra pragmas, foreign keys) and names itself in every error
(`label`), so each keeps its own one-line messages and its own error class.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeAlias

# How long a connection waits for another writer's lock before it fails.
BUSY_TIMEOUT_S = 10.0

Synchronous: TypeAlias = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def open_versioned(
    path: Path,
    *,
    label: str,
    error: type[Exception],
    schema: str,
    schema_version: int,
    synchronous: Synchronous,
    foreign_keys: bool,
    extra_pragmas: Sequence[str] = (),
) -> sqlite3.Connection:
    """A connection to `path` in WAL mode with `schema` created; rows are sqlite3.Row.

    Pragmas are set in this order: journal_mode=WAL, synchronous, each of
    `extra_pragmas` (e.g. "wal_autocheckpoint=0"), foreign_keys=ON if asked.
    Every failure is `error` with one line naming `label` and the file; a file
    whose user_version is above `schema_version` is refused, never touched.
    """
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # isolation_level=None: the caller issues BEGIN/COMMIT itself, so one
        # of its writes is exactly one durable transaction.
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open {label} {path}: {exc}") from None
    try:
        db.row_factory = sqlite3.Row
        _set_pragmas(db, path, label, error, synchronous, foreign_keys, extra_pragmas)
        _create_schema(db, path, label, error, schema, schema_version)
    except sqlite3.Error as exc:
        db.close()
        raise error(f"{label} {path} unusable: {exc}") from None
    except error:
        db.close()
        raise
    return db


def _set_pragmas(
    db: sqlite3.Connection,
    path: Path,
    label: str,
    error: type[Exception],
    synchronous: Synchronous,
    foreign_keys: bool,
    extra_pragmas: Sequence[str],
) -> None:
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise error(f"{label} {path}: cannot use WAL journal (got {mode})")
    # Per connection, not persistent: every open sets them again.
    db.execute(f"PRAGMA synchronous={synchronous}")
    for pragma in extra_pragmas:
        db.execute(f"PRAGMA {pragma}")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")


def _create_schema(
    db: sqlite3.Connection,
    path: Path,
    label: str,
    error: type[Exception],
    schema: str,
    schema_version: int,
) -> None:
    """Create what is missing (the schema is all IF NOT EXISTS), then stamp the version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > schema_version:
        raise error(f"{label} {path} has schema {version}, newer than {schema_version}")
    db.executescript("BEGIN IMMEDIATE;" + schema + "COMMIT;")
    db.execute(f"PRAGMA user_version={schema_version}")


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: BEGIN IMMEDIATE (the write lock taken at once, so two
    writers never both read before either writes), COMMIT when the block ends, ROLLBACK
    when it raises (a refusal the block raises itself included) or the COMMIT fails."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
