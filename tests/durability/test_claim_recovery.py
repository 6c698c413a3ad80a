"""Start-up recovery of apply-once claims and token ids from the audit log
(daemon/claim_recovery.py): a GO waits for the audit log's sync alone, so a
power loss may leave the state store without a claim the audit log holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.audit import AuditCorruptError, AuditLog
from daemon.claim_recovery import JTI_WINDOW_S, recover_from_audit
from daemon.store import CorrectionStore

ROOT = Path(__file__).resolve().parents[2]
TARGET = {"lat": 1.0, "lng": 2.0, "vrt": -0.5, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}


def _claim_record(log: AuditLog, confirmation_id: str, proposal_id: str) -> None:
    """What the motion gate writes just before it claims a move (daemon/motion_gate.py)."""
    log.append("command", "alice", command="couch_target", confirmation_id=confirmation_id,
               proposal_id=proposal_id, target=TARGET, validity_ms=1000)


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "audit")
    audit.open()
    return audit


@pytest.fixture
def store(tmp_path: Path) -> CorrectionStore:
    return CorrectionStore(tmp_path / "igrt.sqlite")


def test_a_claim_the_audit_log_holds_and_the_store_lost_is_stored_as_interrupted(
        log: AuditLog, store: CorrectionStore) -> None:
    _claim_record(log, "conf-1", "prop-1")  # the power went before the WAL's sync

    recovered = recover_from_audit(log.directory, store, log)

    assert recovered.claims == ["conf-1"]
    move = store.move_for_confirmation("conf-1")
    assert move is not None and move["state"] == "interrupted"
    assert move["target"] == TARGET


def test_a_recovered_claim_is_never_claimed_again(log: AuditLog, store: CorrectionStore) -> None:
    _claim_record(log, "conf-1", "prop-1")
    recover_from_audit(log.directory, store, log)
    assert not store.claim_move("conf-1", "prop-1", TARGET)


def test_a_recovered_claim_is_audited(log: AuditLog, store: CorrectionStore) -> None:
    _claim_record(log, "conf-1", "prop-1")
    recover_from_audit(log.directory, store, log)
    last = log.tail(1)[0]
    assert last.event == "recovery"
    assert last.details["confirmation_id"] == "conf-1"
    assert "never re-sent" in str(last.details["outcome"])


def test_a_claim_the_store_holds_is_left_as_it_is(log: AuditLog, store: CorrectionStore) -> None:
    _claim_record(log, "conf-1", "prop-1")
    assert store.claim_move("conf-1", "prop-1", TARGET)
    store.finish_move("conf-1", "completed")

    recovered = recover_from_audit(log.directory, store, log)

    assert recovered.claims == []
    move = store.move_for_confirmation("conf-1")
    assert move is not None and move["state"] == "completed"
    assert log.tail(1)[0].event == "command"  # nothing audited


def test_every_claim_after_the_newest_stored_one_is_recovered(
        log: AuditLog, store: CorrectionStore) -> None:
    _claim_record(log, "conf-1", "prop-1")
    assert store.claim_move("conf-1", "prop-1", TARGET)
    _claim_record(log, "conf-2", "prop-2")
    _claim_record(log, "conf-3", "prop-3")

    recovered = recover_from_audit(log.directory, store, log)

    assert recovered.claims == ["conf-2", "conf-3"]


def test_the_log_is_read_back_only_to_the_newest_stored_claim_once_past_the_token_window(
        log: AuditLog, store: CorrectionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 2 * JTI_WINDOW_S)
    for i in range(50):  # older claims, long ago
        _claim_record(log, f"old-{i}", f"prop-old-{i}")
        assert store.claim_move(f"old-{i}", f"prop-old-{i}", TARGET)
    _claim_record(log, "not-stored", "prop-x")  # the store's commits are durable in order:
    monkeypatch.setattr(time, "time", lambda: now)  # this cannot happen, and shows the stop
    _claim_record(log, "newest", "prop-newest")
    assert store.claim_move("newest", "prop-newest", TARGET)

    recovered = recover_from_audit(log.directory, store, log)

    assert recovered.claims == []
    assert recovered.records_read == 2  # the newest claim, and the first one past the window


def test_a_token_id_the_store_lost_is_refused_again_as_a_replay(
        log: AuditLog, store: CorrectionStore) -> None:
    log.append("console.command", "alice", cmd="confirm", jti="token-1", console="c1")

    recovered = recover_from_audit(log.directory, store, log)

    assert recovered.token_ids == 1
    assert not store.remember_jti("token-1", time.time() + 30)


def test_a_token_id_the_store_holds_is_not_counted(log: AuditLog, store: CorrectionStore) -> None:
    assert store.remember_jti("token-1", time.time() + 30)
    log.append("console.command", "alice", cmd="confirm", jti="token-1", console="c1")
    assert recover_from_audit(log.directory, store, log).token_ids == 0


def test_a_token_id_older_than_the_window_is_not_remembered_again(
        log: AuditLog, store: CorrectionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - JTI_WINDOW_S - 60)
    log.append("console.command", "alice", cmd="status", jti="old-token", console="c1")
    monkeypatch.setattr(time, "time", lambda: now)
    log.append("console.command", "alice", cmd="status", jti="new-token", console="c1")

    assert recover_from_audit(log.directory, store, log).token_ids == 1
    assert store.remember_jti("old-token", now + 30)


def test_a_refused_claim_record_spends_its_confirmation(
        log: AuditLog, store: CorrectionStore) -> None:
    # The proposal had a completed move under another confirmation: the claim was
    # refused, and recovery stores the spent confirmation, not a second move.
    _claim_record(log, "conf-1", "prop-1")
    assert store.claim_move("conf-1", "prop-1", TARGET)
    store.finish_move("conf-1", "completed")
    _claim_record(log, "conf-2", "prop-1")

    assert recover_from_audit(log.directory, store, log).claims == ["conf-2"]
    assert store.proposal_completed("prop-1")
    assert not store.claim_move("conf-3", "prop-1", TARGET)


def test_an_unreadable_record_stops_start_up_with_one_line(
        log: AuditLog, store: CorrectionStore) -> None:
    _claim_record(log, "conf-1", "prop-1")
    log.close()
    segment = max(log.directory.glob("audit-*.jsonl"))
    with segment.open("ab") as f:
        f.write(b'{"event": "command", "details": {"command": "couch_target"}}\n')
    with pytest.raises(AuditCorruptError, match=r"line \d+: .*run `igrtctl audit verify`"):
        recover_from_audit(log.directory, store, log)


def test_igrtd_with_an_unreadable_claim_record_does_not_start_and_says_so_in_one_line(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = AuditLog(state / "audit")
    log.open()
    _claim_record(log, "conf-1", "prop-1")
    for _ in range(20):  # the tail the audit log itself checks as it opens is sound
        log.append("startup", "system")
    log.close()
    segment = max(log.directory.glob("audit-*.jsonl"))
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[-21] = lines[-21].replace(b'"conf-1"', b'"conf-1', 1)  # not JSON any more
    segment.write_bytes(b"".join(lines))
    config = tmp_path / "room.json"
    config.write_text(json.dumps({"state_dir": str(state), "couch": {"port": "/dev/null"},
                                  "users": [{"name": "alice", "role": "therapist"}]}))

    done = subprocess.run([sys.executable, "-m", "daemon.main", "--config", str(config)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("igrtd: ")]
    assert len(errors) == 1, done.stderr
    assert "line 1: " in errors[0] and "run `igrtctl audit verify`" in errors[0]
    assert "Traceback" not in done.stderr
