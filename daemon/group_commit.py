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
millisecond on an idle disk; the flusher is woken once a step, see `_kick`),
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

A failed sync is sticky: the failing source refuses every later write itself
(AuditLog and CorrectionStore), and every barrier from then on raises, so no
motion follows an fsync error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from daemon.loop_step import AfterThisStep

log = logging.getLogger("igrt.durability")


class DurabilityError(Exception):
    """A sync failed: records written before a barrier may not be durable. One line."""


SyncFn = Callable[[], None]
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
        self._journal_done = 0  # ... in the journal
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
        self._thread = threading.Thread(target=self._run, name="igrt-group-commit", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """A record was written: make it durable soon (no wait). Any thread."""
        with self._cond:
            self._requested += 1
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
            need = self._requested
            if (self._journal_done if journal_only else self._done) >= need:
                fut.set_result(None)  # nothing written since the last flush began
                return fut
            (self._journal_waiters if journal_only else self._waiters).append(
                (need, fut, loop))
        self._kick()
        return fut

    def _wake_flusher(self) -> None:
        with self._cond:
            self._cond.notify()

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
                while self._requested == self._done and not self._stopping:
                    self._cond.wait()
                if self._requested == self._done:  # stopping, nothing left
                    return
                generation = self._requested
            # The journal first, and its waiters (a GO) answered before the others
            # are synced. The rest one after the other, in this one thread: syncing
            # them side by side in a helper thread showed no gain on the confirm path
            # and a thread more taking the interpreter lock from the event loop.
            self._sync(self._journal)
            self._finish(generation, journal=True)
            for sync in self._others:
                self._sync(sync)
            self._finish(generation, journal=False)

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


def _settle(fut: asyncio.Future[None], failed: str | None) -> None:
    if fut.done():  # the waiter was cancelled
        return
    if failed is None:
        fut.set_result(None)
    else:
        fut.set_exception(DurabilityError(failed))
