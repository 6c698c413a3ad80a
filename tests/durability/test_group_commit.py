"""Group commit (daemon/group_commit.py): records are written on the event loop and
made durable by one flusher thread; a motion goes out only after a sync that
started after its records were written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import fake_room
from rules.helpers import ALICE, SMALL, propose

from daemon.api import CommandError
from daemon.audit import AuditLog
from daemon.group_commit import DurabilityError, GroupCommit
from daemon.store import CorrectionStore


class _GatedSource:
    """A sync that can be held at its start, counting the syncs that finished."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = 0
        self.fail: str | None = None

    def __call__(self) -> None:
        self.started.set()
        assert self.release.wait(5)
        if self.fail:
            raise OSError(self.fail)
        self.finished += 1


@contextlib.contextmanager
def _journal_and_store() -> Iterator[tuple[GroupCommit, _GatedSource, _GatedSource]]:
    """A group commit of a journal and a store whose syncs run at once."""
    journal, store = _GatedSource(), _GatedSource()
    journal.release.set()
    store.release.set()
    commit = GroupCommit(journal, [store])
    try:
        yield commit, journal, store
    finally:
        commit.close()


async def test_a_barrier_waits_for_a_sync_that_began_after_the_last_record_before_it() -> None:
    src = _GatedSource()
    commit = GroupCommit(src)
    try:
        commit.journal_written()  # a first sync starts and is held
        assert await asyncio.to_thread(src.started.wait, 5)
        commit.journal_written()  # a record the held sync may not cover
        barrier = commit.barrier()
        await asyncio.sleep(0.01)
        src.started.clear()
        src.release.set()  # the held sync ends: it began before the second record
        assert await asyncio.to_thread(src.started.wait, 5)  # a second sync began
        await asyncio.wait_for(barrier, 5)
        assert src.finished == 2
    finally:
        src.release.set()
        commit.close()


async def test_a_barrier_is_met_by_a_sync_under_way_that_began_after_every_record() -> None:
    src = _GatedSource()
    commit = GroupCommit(src)
    try:
        commit.journal_written()  # the claim, say: a sync starts for it and is held
        assert await asyncio.to_thread(src.started.wait, 5)
        barrier = commit.barrier()  # nothing written since that sync began
        await asyncio.sleep(0.01)
        assert not barrier.done()
        src.release.set()
        await asyncio.wait_for(barrier, 5)
        assert src.finished == 1
    finally:
        src.release.set()
        commit.close()


async def test_a_barrier_with_nothing_written_since_the_last_sync_returns_at_once() -> None:
    src = _GatedSource()
    src.release.set()
    commit = GroupCommit(src)
    try:
        commit.journal_written()
        await asyncio.wait_for(commit.barrier(), 5)
        finished = src.finished
        await asyncio.wait_for(commit.barrier(), 5)
        assert src.finished == finished
    finally:
        commit.close()


async def test_a_failed_sync_refuses_every_later_barrier() -> None:
    src = _GatedSource()
    src.fail = "No space left on device"
    src.release.set()
    commit = GroupCommit(src)
    try:
        commit.journal_written()
        with pytest.raises(DurabilityError, match="No space left on device"):
            await asyncio.wait_for(commit.barrier(), 5)
        with pytest.raises(DurabilityError, match="No space left on device"):
            await commit.barrier()
    finally:
        commit.close()


async def test_a_journal_barrier_is_met_before_the_other_sources_are_synced() -> None:
    journal, store = _GatedSource(), _GatedSource()
    journal.release.set()
    commit = GroupCommit(journal, [store])
    try:
        commit.journal_written()
        await asyncio.wait_for(commit.journal_barrier(), 5)  # the store's sync is held
        assert journal.finished == 1 and store.finished == 0
        everything = commit.barrier()
        await asyncio.sleep(0.01)
        assert not everything.done()
        store.release.set()
        await asyncio.wait_for(everything, 5)
    finally:
        store.release.set()
        commit.close()


async def test_a_journal_barrier_waits_for_a_journal_sync_that_began_after_its_records() -> None:
    journal = _GatedSource()
    commit = GroupCommit(journal, [])
    try:
        commit.journal_written()
        assert await asyncio.to_thread(journal.started.wait, 5)
        commit.journal_written()  # the claim's record, after the held sync began
        barrier = commit.journal_barrier()
        journal.started.clear()
        journal.release.set()
        assert await asyncio.to_thread(journal.started.wait, 5)
        await asyncio.wait_for(barrier, 5)
        assert journal.finished == 2
    finally:
        journal.release.set()
        commit.close()


async def test_a_failed_journal_sync_refuses_the_journal_barrier() -> None:
    journal = _GatedSource()
    journal.fail = "Input/output error"
    journal.release.set()
    commit = GroupCommit(journal, [])
    try:
        commit.journal_written()
        with pytest.raises(DurabilityError, match="Input/output error"):
            await asyncio.wait_for(commit.journal_barrier(), 5)
    finally:
        commit.close()


async def test_a_failed_store_sync_refuses_every_later_journal_barrier() -> None:
    journal, store = _GatedSource(), _GatedSource()
    journal.release.set()
    store.fail = "No space left on device"
    store.release.set()
    commit = GroupCommit(journal, [store])
    try:
        commit.written()
        with pytest.raises(DurabilityError, match="No space left on device"):
            await asyncio.wait_for(commit.barrier(), 5)
        commit.journal_written()
        with pytest.raises(DurabilityError, match="No space left on device"):
            await asyncio.wait_for(commit.journal_barrier(), 5)
    finally:
        commit.close()


async def test_a_journal_barrier_is_not_held_up_by_store_writes_after_the_journals(
        ) -> None:
    """The GO's claim goes into the store after its audit record: a journal sync that
    began after the record and before the claim meets the GO's barrier."""
    journal, store = _GatedSource(), _GatedSource()
    store.release.set()
    commit = GroupCommit(journal, [store])
    try:
        commit.journal_written()  # the couch_target record
        barrier = commit.journal_barrier()
        assert await asyncio.to_thread(journal.started.wait, 5)
        commit.written()  # the claim, in the store, while the journal's sync runs
        journal.release.set()
        await asyncio.wait_for(barrier, 5)
        assert journal.finished == 1
    finally:
        journal.release.set()
        commit.close()


async def test_a_journal_barrier_starts_the_journals_sync_within_the_step_that_asks() -> None:
    """Asked for as the TARGET is written, the sync runs while the rest of that
    event-loop step does (the claim), not after it."""
    journal = _GatedSource()
    journal.release.set()
    commit = GroupCommit(journal, [])
    try:
        commit.journal_written()
        barrier = commit.journal_barrier()
        # The loop is held here, in the step that asked: only a flusher woken at
        # once can have started.
        assert journal.started.wait(5)
        await asyncio.wait_for(barrier, 5)
    finally:
        commit.close()


async def test_a_flush_for_store_writes_alone_does_not_sync_the_journal() -> None:
    with _journal_and_store() as (commit, journal, store):
        commit.journal_written()
        await asyncio.wait_for(commit.barrier(), 5)
        commit.written()  # the store alone
        await asyncio.wait_for(commit.barrier(), 5)
        assert (journal.finished, store.finished) == (1, 2)


async def test_records_written_while_a_motion_command_runs_start_no_flush() -> None:
    with _journal_and_store() as (commit, journal, store):
        release = commit.hold()
        commit.journal_written()  # the command's verification, confirmation, ...
        commit.written()  # ... and the replay cache, the confirmation's row
        await asyncio.sleep(0.02)  # several event-loop steps
        assert (journal.finished, store.finished) == (0, 0)
        release()
        await asyncio.wait_for(commit.barrier(), 5)
        assert (journal.finished, store.finished) == (1, 1)


async def test_held_a_gos_barrier_syncs_the_journal_and_leaves_the_rest_until_the_hold_ends(
        ) -> None:
    with _journal_and_store() as (commit, journal, store):
        release = commit.hold()
        commit.journal_written()
        commit.written()
        await asyncio.wait_for(commit.journal_barrier(), 5)
        await asyncio.sleep(0.02)
        assert (journal.finished, store.finished) == (1, 0)
        release()
        await asyncio.wait_for(commit.barrier(), 5)
        assert store.finished == 1


async def test_held_a_barrier_for_every_source_is_not_held_back() -> None:
    """A jog's or an arm command's barrier, asked for inside the command's own hold."""
    with _journal_and_store() as (commit, journal, store):
        release = commit.hold()
        commit.journal_written()
        commit.written()
        await asyncio.wait_for(commit.barrier(), 5)
        assert (journal.finished, store.finished) == (1, 1)
        release()


async def test_a_hold_never_released_ends_by_itself() -> None:
    journal = _GatedSource()
    journal.release.set()
    commit = GroupCommit(journal, [])
    try:
        commit.hold(max_hold_s=0.02)
        commit.journal_written()
        for _ in range(100):
            if journal.finished:
                break
            await asyncio.sleep(0.01)
        assert journal.finished == 1
    finally:
        commit.close()


async def test_go_waits_for_the_audit_logs_sync_alone(
        tmp_path: Path) -> None:
    async def go_barrier() -> None:
        room.journal.add("AUDIT DURABLE")

    async def barrier() -> None:
        room.journal.add("ALL DURABLE")

    room = await fake_room(tmp_path, barrier=barrier, go_barrier=go_barrier)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    await room.service.hold(ALICE, pid)
    assert room.journal.index("audit:command") < room.journal.index("AUDIT DURABLE") \
        < room.journal.index("GO")
    assert room.journal.count("ALL DURABLE") == 0


async def test_go_waits_for_the_records_before_it_to_be_durable(tmp_path: Path) -> None:
    async def barrier() -> None:
        await asyncio.sleep(0.01)  # the disk takes its time
        room.journal.add("DURABLE")

    room = await fake_room(tmp_path, barrier=barrier)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    await room.service.hold(ALICE, pid)
    claim = room.journal.index("audit:command")
    assert claim < room.journal.index("DURABLE") < room.journal.index("GO")


async def test_no_go_when_the_records_before_it_cannot_be_made_durable(tmp_path: Path) -> None:
    async def barrier() -> None:
        raise DurabilityError("durable write failed: Input/output error")

    room = await fake_room(tmp_path, barrier=barrier)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    with pytest.raises(CommandError, match="not durable: durable write failed"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("GO") == 0
    assert room.journal.count("STOP") >= 1  # the armed target is cleared
    assert str(room.service.workflow.state) == "PROPOSED"


def test_deferred_audit_records_are_synced_by_sync_not_by_append(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    log = AuditLog(tmp_path / "audit", deferred_sync=True)
    log.open()
    log.append("first", "system")  # the new segment's first record is synced at once
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    log.append("second", "system")
    log.append("third", "system")
    assert synced == []
    log.sync()
    assert len(synced) == 1
    log.close()


def test_deferred_store_commits_are_synced_through_the_wal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fdatasync
    store = CorrectionStore(tmp_path / "igrt.sqlite", deferred_sync=True)
    monkeypatch.setattr(os, "fdatasync",
                        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                    real(fd))[1])
    assert store.claim_move("conf-1", "prop-1", {"lat": 1.0})
    assert synced == []  # the commit itself did not wait for the disk
    store.sync()
    assert synced == [str(tmp_path / "igrt.sqlite-wal")]
    store.close()
    assert CorrectionStore(tmp_path / "igrt.sqlite").move_for_confirmation("conf-1")


def test_the_store_connection_on_the_event_loop_never_syncs(tmp_path: Path) -> None:
    # SQLite at NORMAL synced the WAL header on the loop whenever a commit started
    # the WAL afresh after a checkpoint; OFF leaves every sync to sync() (the group
    # commit thread), and the checkpointing connection syncs the database itself.
    store = CorrectionStore(tmp_path / "igrt.sqlite", deferred_sync=True)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 0
    store._checkpoint()
    assert store._checkpointer is not None
    assert store._checkpointer.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()


def test_a_checkpoint_is_taken_once_per_wal_full_of_commits_not_at_every_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_COMMITS", 16)
    store = CorrectionStore(tmp_path / "igrt.sqlite", deferred_sync=True)
    checkpoints: list[int] = []
    real = store._checkpoint
    monkeypatch.setattr(store, "_checkpoint", lambda: (checkpoints.append(1), real())[1])
    for i in range(16):  # a WAL full of commits, synced one by one
        assert checkpoints == []
        assert store.claim_move(f"conf-{i}", f"prop-{i}", {"lat": 1.0})
        store.sync()
        assert store.wait_checkpoint_idle()
    assert len(checkpoints) == 1
    for j in range(5):  # a few commits after the checkpoint: below the next one
        assert store.claim_move(f"after-{j}", f"prop-after-{j}", {"lat": 1.0})
        store.sync()
        assert store.wait_checkpoint_idle()
    assert len(checkpoints) == 1
    store.close()
    assert CorrectionStore(tmp_path / "igrt.sqlite").move_for_confirmation("after-4")


def test_a_wal_started_afresh_after_a_checkpoint_keeps_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Written over from its start, the WAL's fdatasync before a GO puts data into
    # blocks the file already has: no file system journal commit for a grown size,
    # as while each fresh start cut the file back to nothing.
    import daemon.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_COMMITS", 16)
    store = CorrectionStore(tmp_path / "igrt.sqlite", deferred_sync=True)
    for i in range(16):
        assert store.claim_move(f"conf-{i}", f"prop-{i}", {"lat": 1.0})
        store.sync()
    assert store.wait_checkpoint_idle()
    wal = tmp_path / "igrt.sqlite-wal"
    full = wal.stat().st_size
    assert store.claim_move("after", "prop-after", {"lat": 1.0})  # the WAL starts afresh
    store.sync()
    assert wal.stat().st_size == full
    store.close()
    assert CorrectionStore(tmp_path / "igrt.sqlite").move_for_confirmation("after")


def test_a_checkpoint_never_runs_inside_the_sync_a_barrier_waits_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 4 MiB checkpoint takes tens of milliseconds; inside sync() it held a GO's
    # barrier for that long. sync() only asks for it; its own thread runs it.
    import daemon.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_COMMITS", 0)
    store = CorrectionStore(tmp_path / "igrt.sqlite", deferred_sync=True)
    entered, release = threading.Event(), threading.Event()
    real = store._checkpoint

    def slow_checkpoint() -> None:
        entered.set()
        assert release.wait(5)
        real()

    monkeypatch.setattr(store, "_checkpoint", slow_checkpoint)
    assert store.claim_move("conf-1", "prop-1", {"lat": 1.0})
    store.sync()  # returns although the checkpoint it asked for is held
    assert entered.wait(5)
    assert store.claim_move("conf-2", "prop-2", {"lat": 1.0})
    store.sync()
    release.set()
    assert store.wait_checkpoint_idle()
    store.close()
    assert CorrectionStore(tmp_path / "igrt.sqlite").move_for_confirmation("conf-2")
