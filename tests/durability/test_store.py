"""Apply-once state: a confirmed correction moves the couch at most once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.store import (
    CLAIM_MOVE,
    JTI_LEEWAY_S,
    JTI_PRUNE_INTERVAL_S,
    CorrectionStore,
    StoreError,
)

TARGET = {"lat_mm": 1.0, "lng_mm": -2.0, "vrt_mm": 0.5}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "igrt.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[CorrectionStore]:
    s = CorrectionStore(db_path)
    yield s
    s.close()


def test_store_uses_wal_with_full_sync(store: CorrectionStore, db_path: Path) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_saved_proposal_reads_back(store: CorrectionStore) -> None:
    store.save_proposal("p1", {"target": TARGET, "verdict": "confirm"})
    assert store.get_proposal("p1") == {"target": TARGET, "verdict": "confirm"}
    assert store.get_proposal("nope") is None


def test_confirmation_is_recorded_once(store: CorrectionStore) -> None:
    assert store.record_confirmation("c1", "p1", "alice", 100.0, approver="bob")
    assert not store.record_confirmation("c1", "p1", "mallory", 200.0)
    assert store.get_confirmation("c1") == {
        "confirmation_id": "c1",
        "proposal_id": "p1",
        "user": "alice",
        "at": 100.0,
        "second_approver": "bob",
    }


def test_first_claim_of_a_confirmation_succeeds_as_sending(store: CorrectionStore) -> None:
    assert store.claim_move("c1", "p1", TARGET)
    move = store.move_for_confirmation("c1")
    assert move is not None and move["state"] == "sending" and move["target"] == TARGET


def test_same_confirmation_is_never_claimed_twice(store: CorrectionStore) -> None:
    assert store.claim_move("c1", "p1", TARGET)
    store.finish_move("c1", "failed", {"why": "link lost"})
    assert not store.claim_move("c1", "p1", TARGET)


def test_completed_proposal_refuses_a_new_confirmation(store: CorrectionStore) -> None:
    assert store.claim_move("c1", "p1", TARGET)
    store.finish_move("c1", "completed", {"residual_mm": 0.1})
    assert store.proposal_completed("p1")
    assert not store.claim_move("c2", "p1", TARGET)


def test_proposal_with_a_move_in_flight_refuses_a_second_move(store: CorrectionStore) -> None:
    assert store.claim_move("c1", "p1", TARGET)
    assert not store.claim_move("c2", "p1", TARGET)


def test_stopped_move_allows_a_fresh_confirmation_of_the_proposal(store: CorrectionStore) -> None:
    assert store.claim_move("c1", "p1", TARGET)
    store.finish_move("c1", "stopped", {"by": "hold released"})
    assert store.claim_move("c2", "p1", TARGET)


def test_the_claim_looks_moves_up_by_index_however_many_the_room_has_made(
        store: CorrectionStore, db_path: Path) -> None:
    """On the way to every GO: by the proposal's index, not a walk over every completed
    move (the claim took 0.1 ms more per thousand moves stored before)."""
    plan = [tuple(r)[-1] for r in store._db.execute(f"EXPLAIN QUERY PLAN {CLAIM_MOVE}",
                                                    ("c1", "p1", "{}", 0.0, "c1", "p1"))]
    assert any("moves_by_proposal" in step for step in plan), plan
    assert not any(step.startswith("SCAN moves") or "moves_by_state" in step
                   for step in plan), plan


def test_an_existing_state_store_gets_the_index_when_opened(db_path: Path) -> None:
    s = CorrectionStore(db_path)
    s._db.execute("DROP INDEX moves_by_proposal")
    s.close()
    again = CorrectionStore(db_path)
    try:
        names = {r[0] for r in again._db.execute("SELECT name FROM sqlite_master WHERE "
                                                  "type = 'index'")}
        assert "moves_by_proposal" in names
    finally:
        again.close()


def test_refused_claim_writes_nothing(store: CorrectionStore) -> None:
    store.claim_move("c1", "p1", TARGET)
    store.claim_move("c1", "p2", {"lat_mm": 9.0})
    assert store.move_for_confirmation("c1")["proposal_id"] == "p1"  # type: ignore[index]
    assert store.moves_for_proposal("p2") == []


def test_move_advances_sending_sent_completed(store: CorrectionStore) -> None:
    store.claim_move("c1", "p1", TARGET)
    assert store.finish_move("c1", "sent")
    assert store.finish_move("c1", "completed", {"residual_mm": 0.2})
    move = store.move_for_confirmation("c1")
    assert move is not None and move["state"] == "completed"
    assert move["detail"] == {"residual_mm": 0.2} and move["ended_at"] is not None


def test_terminal_state_is_final(store: CorrectionStore) -> None:
    store.claim_move("c1", "p1", TARGET)
    store.finish_move("c1", "stopped")
    assert not store.finish_move("c1", "completed")
    assert store.move_for_confirmation("c1")["state"] == "stopped"  # type: ignore[index]


def test_unknown_move_state_is_a_programming_error(store: CorrectionStore) -> None:
    store.claim_move("c1", "p1", TARGET)
    with pytest.raises(ValueError, match="'done'"):
        store.finish_move("c1", "done")
    with pytest.raises(ValueError):
        store.finish_move("c1", "sending")


def test_finishing_an_unknown_move_changes_nothing(store: CorrectionStore) -> None:
    assert not store.finish_move("ghost", "completed")
    assert store.move_for_confirmation("ghost") is None


def test_claim_survives_a_crash_without_close(db_path: Path) -> None:
    crashed = CorrectionStore(db_path)
    assert crashed.claim_move("c1", "p1", TARGET)
    # no close(): a second connection stands in for the restarted daemon
    restarted = CorrectionStore(db_path)
    assert not restarted.claim_move("c1", "p1", TARGET)
    assert [m["confirmation_id"] for m in restarted.unfinished_moves()] == ["c1"]
    crashed.close()
    restarted.close()


def test_interrupted_move_after_restart_is_never_resent(db_path: Path) -> None:
    crashed = CorrectionStore(db_path)
    crashed.claim_move("c1", "p1", TARGET)
    crashed.finish_move("c1", "sent")
    restarted = CorrectionStore(db_path)
    for move in restarted.unfinished_moves():
        assert restarted.mark_interrupted(move["confirmation_id"], {"couch_at": TARGET})
    assert restarted.unfinished_moves() == []
    assert restarted.move_for_confirmation("c1")["state"] == "interrupted"  # type: ignore[index]
    assert not restarted.claim_move("c1", "p1", TARGET)
    crashed.close()
    restarted.close()


def test_completed_state_survives_reopen(db_path: Path) -> None:
    with CorrectionStore(db_path) as s:
        s.claim_move("c1", "p1", TARGET)
        s.finish_move("c1", "completed")
    with CorrectionStore(db_path) as s:
        assert s.proposal_completed("p1")
        assert not s.claim_move("c9", "p1", TARGET)


def test_database_refuses_two_completed_moves_for_one_proposal(store: CorrectionStore) -> None:
    store.claim_move("c1", "p1", TARGET)
    store.finish_move("c1", "completed")
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO moves (confirmation_id, proposal_id, state, target, started_at) "
            "VALUES ('c2', 'p1', 'completed', '{}', 0)"
        )


def test_jti_is_accepted_once(store: CorrectionStore) -> None:
    assert store.remember_jti("j1", exp=2000.0, now=1000.0)
    assert not store.remember_jti("j1", exp=2000.0, now=1001.0)


def test_jti_cache_survives_reopen(db_path: Path) -> None:
    with CorrectionStore(db_path) as s:
        s.remember_jti("j1", exp=2000.0, now=1000.0)
    with CorrectionStore(db_path) as s:
        assert not s.remember_jti("j1", exp=2000.0, now=1500.0)


def test_jti_is_pruned_only_after_exp_plus_leeway(store: CorrectionStore) -> None:
    store.remember_jti("j1", exp=1000.0, now=900.0)
    assert not store.remember_jti("j1", exp=1000.0, now=1000.0 + JTI_LEEWAY_S - 1)
    # Pruned at the first command a prune interval after the last prune.
    store.remember_jti("other", exp=5000.0, now=1000.0 + JTI_LEEWAY_S + JTI_PRUNE_INTERVAL_S)
    count = store._db.execute("SELECT COUNT(*) FROM jti WHERE jti = 'j1'").fetchone()[0]
    assert count == 0


def test_a_file_that_is_not_a_database_gives_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "igrt.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="unusable") as info:
        CorrectionStore(bad)
    assert "\n" not in str(info.value)
