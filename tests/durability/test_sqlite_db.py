"""Opening a versioned SQLite file (daemon/sqlite_db.py), shared by the two stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.sqlite_db import Synchronous, immediate, open_versioned

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);"


class NotesError(Exception):
    pass


def _open(path: Path, synchronous: Synchronous = "FULL",
          extra_pragmas: tuple[str, ...] = ()) -> sqlite3.Connection:
    return open_versioned(path, label="notes store", error=NotesError, schema=SCHEMA,
                          schema_version=2, synchronous=synchronous, foreign_keys=True,
                          extra_pragmas=extra_pragmas)


def test_opens_in_wal_with_the_asked_durability_and_its_directory_created(
        tmp_path: Path) -> None:
    db = _open(tmp_path / "new" / "notes.sqlite", synchronous="OFF",
               extra_pragmas=("wal_autocheckpoint=0",))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 0
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert db.isolation_level is None  # the stores issue BEGIN/COMMIT themselves
    assert db.row_factory is sqlite3.Row
    db.close()


def test_refuses_a_newer_version_with_a_one_line_error_naming_file_and_versions(
        tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version=3")
    newer.close()
    with pytest.raises(NotesError) as info:
        _open(path)
    assert str(info.value) == f"notes store {path} has schema 3, newer than 2"
    check = sqlite3.connect(path)  # refused, never touched
    assert check.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    check.close()


def test_creates_the_schema_once_and_keeps_its_rows_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    db = _open(path)
    db.execute("INSERT INTO notes (text) VALUES ('kept')")
    db.close()
    db = _open(path)
    assert [tuple(r) for r in db.execute("SELECT text FROM notes")] == [("kept",)]
    assert db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 1
    db.close()


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"not sqlite" * 100)
    with pytest.raises(NotesError) as info:
        _open(path)
    assert str(info.value) == f"notes store {path} unusable: file is not a database"


def test_a_write_transaction_commits_its_block(tmp_path: Path) -> None:
    db = _open(tmp_path / "notes.sqlite")
    with immediate(db):
        db.execute("INSERT INTO notes (text) VALUES ('kept')")
    assert not db.in_transaction
    assert db.execute("SELECT text FROM notes").fetchall()[0][0] == "kept"


def test_a_write_transaction_that_raises_leaves_nothing_written(tmp_path: Path) -> None:
    db = _open(tmp_path / "notes.sqlite")
    with pytest.raises(NotesError, match="refused"), immediate(db):
        db.execute("INSERT INTO notes (text) VALUES ('gone')")
        raise NotesError("refused")
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0
