"""Group commit: igrtd's durable writes made durable off the event loop.

The audit log and the SQLite state store write on the event loop (a write()
into the page cache, tens of microseconds) and leave the fsync to one
flusher thread, which syncs every source together: one fdatasync per file
covers every record written before it started. Before
anything whose effect leaves igrtd and must be preceded by durable records (a
jog, an arm command: daemon/motion_gate.py), the loop awaits `barrier()`,
which resolves once a sync that began after the last record written before
the call has finished; a GO awaits `journal_barrier()`, the same for the
audit log alone (below). Everything else is
durable within the event-loop step that wrote it and one flush (about a
millisecond on an idle disk; the flusher is woken once a step, see `_kick`;
what a motion command writes, within one flush of its end, see `hold`),
without the loop ever waiting for a disk: an fsync on the loop used to delay a STOP by
milliseconds, tens under disk load (issue 13, items 5 and 6).

A written record is in the kernel's page cache at once, so a crash of igrtd
itself (kill -9, a bug) loses nothing; only a power loss or kernel crash
within the flush window could lose records that no motion depended on.

The first source is the journal: the audit log, which igrtd recovers the
apply-once claims from after a power loss (daemon/claim_recovery.py). Each
flush syncs it first and resolves `journal_barrier()` at once, before the
other sources are synced: a GO waits for that one sync, not for two one after
the other (the state store's WAL as well). Measured in igrtd's classes beside
a `dd` writing with a sync per block, the wait from the claim to durable went
from p50 1.05 / p99 6.24 ms to 0.60 / 4.74 ms (1,000 each, interleaved:
bench/durability_bench.py), and the GO only waits for what of it exceeds
TARGET's and its echo's time on the wire.

The journal keeps its own count of records (`journal_written`), so a GO's
barrier is met by a journal sync that began after the GO's own audit records
though the claim went into the store after them, and a flush for store writes
alone does not sync the journal. A journal barrier wakes the flusher at once,
not after the event-loop step: it is asked for as the TARGET is written, when
every record it needs is written, and the sync then runs while the rest of
that step (the claim) does.

A failed sync is sticky: the failing source refuses every later write itself
(AuditLog and CorrectionStore), and every barrier from then on raises, so no
motion follows an fsync error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from daemon.loop_step import AfterThisStep

log = logging.getLogger("igrt.durability")


# A motion command holds background flushes at most this long (`hold`), as it holds
# the consoles' publications (daemon/publications.py).
MAX_HOLD_S = 0.2


def _nothing() -> None:
    return None


class DurabilityError(Exception):
    """A sync failed: records written before a barrier may not be durable. One line."""


SyncFn = Callable[[], None]


class DurableSource(Protocol):
    """A store that writes at once and syncs when told (AuditLog, CorrectionStore in
    deferred-sync mode): `on_write` is called after each write."""

    on_write: Callable[[], None] | None

    def sync(self) -> None: ...
# (generation it needs, its future, the loop to settle it on)
_Waiter = tuple[int, asyncio.Future[None], asyncio.AbstractEventLoop]


class GroupCommit:
    """One flusher thread for the sync functions of igrtd's durable stores."""

    def __init__(self, journal: SyncFn, others: list[SyncFn] | None = None) -> None:
        self._journal = journal
        self._others = list(others or [])
        self._cond = threading.Condition()
        self._requested = 0  # bumped by every record written
        self._done = 0  # every record up to this generation is durable in every source
        # The journal's own count: a GO's barrier needs the journal's records alone,
        # so a flush that began after them counts though the store wrote since.
        self._journal_requested = 0
        self._journal_done = 0
        self._failed: str | None = None
        self._stopping = False
        self._waiters: list[_Waiter] = []
        self._journal_waiters: list[_Waiter] = []
        # Wakes the flusher once the event-loop step that asked is done; at once from
        # another thread. A step on the way to a GO writes half a dozen records
        # (verification, confirmation, transitions, the claim) and asks for the
        # barrier before the TARGET is written. Woken at each, the flusher synced
        # alongside that step and took the interpreter lock from it at every system
        # call it returned from; woken after it, one flush covers them all while
        # TARGET and its echo are on the wire.
        self._kick = AfterThisStep(self._wake_flusher)
        # Motion commands running (`hold`): meanwhile only a barrier starts a flush.
        self._holds = 0
        self._thread = threading.Thread(target=self._run, name="igrt-group-commit", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """A record was written: make it durable soon (no wait). Any thread."""
        with self._cond:
            self._requested += 1
        self._kick()

    def journal_written(self) -> None:
        """As `written`, for a record of the journal (the audit log)."""
        with self._cond:
            self._requested += 1
            self._journal_requested += 1
        self._kick()

    def barrier(self) -> asyncio.Future[None]:
        """A future that resolves once every record written before this call is
        durable in every source, or raises DurabilityError if a sync failed (now or
        earlier).

        What it waits for is fixed by the call, not by when the future is first
        awaited: records bump the generation as they are written, so a flush that
        began after the last of them covers them. A barrier asked for just after a
        record is so met by a flush already under way that began after it, not only
        by one that begins after the barrier (the confirm path traced 1-2 ms of
        waiting for that needless second flush, issue 13 item 6)."""
        return self._barrier(journal_only=False)

    def journal_barrier(self) -> asyncio.Future[None]:
        """As `barrier`, for the journal (the audit log) alone: what a GO waits for,
        its apply-once claim being recoverable from the journal."""
        return self._barrier(journal_only=True)

    def _barrier(self, *, journal_only: bool) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._failed is not None:
                fut.set_exception(DurabilityError(self._failed))
                return fut
            if self._stopping:
                fut.set_exception(DurabilityError(
                    "durable writes are closed: igrtd is stopping"))
                return fut
            need = self._journal_requested if journal_only else self._requested
            if (self._journal_done if journal_only else self._done) >= need:
                fut.set_result(None)  # nothing written since the last flush began
                return fut
            (self._journal_waiters if journal_only else self._waiters).append(
                (need, fut, loop))
            if journal_only or self._holds:
                # At once, not after this step. A GO's barrier is asked for as the
                # TARGET is written, every record it needs already written: the flush
                # runs beside the rest of the step (the claim) and has that much
                # longer to finish before the echo is in. Held, a jog's or an arm
                # command's barrier is the only thing that starts a flush.
                self._cond.notify()
                return fut
        self._kick()
        return fut

    def _wake_flusher(self) -> None:
        with self._cond:
            self._cond.notify()

    def hold(self, max_hold_s: float = MAX_HOLD_S) -> Callable[[], None]:
        """Start no flush for the records written from now until the returned function
        is called (once is enough, more is harmless) or `max_hold_s` has passed, unless
        a barrier asks; and while a GO's journal barrier is met, leave the other
        sources' sync until then, unless a barrier for them waits.

        For a command that may start motion (daemon/console/dispatch.py): its
        verification's and its execution's records (replay cache, verification,
        confirmation, transitions) each woke the flusher after their step, and its
        syncs then ran alongside the command's next step and took the interpreter
        lock and a core from it on its way to the TARGET; the state store's sync
        took a core from the couch controller's simulator while TARGET and its echo
        were on the wire. Held, the records are synced by the GO's barrier's flush
        (the journal) and after the command (the rest): a few milliseconds later
        than they would have been, and before anything leaves igrtd that needs them.
        Outside an event loop: nothing is held."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _nothing
        with self._cond:
            self._holds += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            expiry.cancel()
            with self._cond:
                self._holds -= 1
                self._cond.notify()

        expiry = loop.call_later(max_hold_s, release)
        return release

    def flush_now(self) -> None:
        """Sync every source in the calling thread (start-up, shutdown)."""
        self._journal()
        for sync in self._others:
            sync()

    def close(self) -> None:
        """Let the thread finish its last flush, then sync once more here."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(5.0)
        if self._failed is None:
            try:
                self.flush_now()
            except Exception as exc:  # noqa: BLE001 - reported, shutdown goes on
                log.error("final sync failed: %s", exc)

    # -------------------------------------------------------------- thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._journal_requested > self._journal_done and (
                            self._unheld() or self._journal_waiters):
                        break
                    if self._requested > self._done and self._unheld():
                        break
                    self._cond.wait()
                if self._requested == self._done:  # stopping, nothing left
                    return
                generation = self._requested
                journal_generation = self._journal_requested
                journal_pending = journal_generation > self._journal_done
                # Held, a GO's flush syncs the journal alone; the rest after the hold.
                sync_others = self._unheld() or self._stopping
            # The journal first, and its waiters (a GO) answered before the others
            # are synced. The rest one after the other, in this one thread: syncing
            # them side by side in a helper thread showed no gain on the confirm path
            # and a thread more taking the interpreter lock from the event loop.
            if journal_pending:  # a flush for the store's writes alone skips the journal
                self._sync(self._journal)
            self._finish(journal_generation, journal=True)
            if not sync_others:
                continue
            for sync in self._others:
                self._sync(sync)
            self._finish(generation, journal=False)

    def _unheld(self) -> bool:
        """Whether every source may be synced now: no motion command holds the
        flushes, or a barrier for every source waits. Called holding `_cond`."""
        return not self._holds or bool(self._waiters)

    def _sync(self, sync: SyncFn) -> None:
        """Run one source's sync; a failure is kept (sticky), never raised here."""
        try:
            sync()
        except Exception as exc:  # noqa: BLE001 - any failure: nothing is vouched for
            error = f"durable write failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
            log.error("%s", error)
            with self._cond:
                if self._failed is None:
                    self._failed = error

    def _finish(self, generation: int, *, journal: bool) -> None:
        with self._cond:
            if journal:
                self._journal_done = generation
                waiting = self._journal_waiters
            else:
                self._done = generation
                waiting = self._waiters
            ready = [w for w in waiting if w[0] <= generation]
            waiting[:] = [w for w in waiting if w[0] > generation]
            failed = self._failed
        for _, fut, loop in ready:
            loop.call_soon_threadsafe(_settle, fut, failed)


def group_commit_for(journal: DurableSource, others: Sequence[DurableSource]) -> GroupCommit:
    """The group commit of igrtd's stores, each told to report its writes to it: the
    one wiring igrtd and its benchmarks use."""
    commit = GroupCommit(journal.sync, [source.sync for source in others])
    journal.on_write = commit.journal_written
    for source in others:
        source.on_write = commit.written
    return commit


def _settle(fut: asyncio.Future[None], failed: str | None) -> None:
    if fut.done():  # the waiter was cancelled
        return
    if failed is None:
        fut.set_result(None)
    else:
        fut.set_exception(DurabilityError(failed))
