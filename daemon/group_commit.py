"""Group commit: igrtd's durable writes made durable off the event loop.

The audit log and the SQLite state store write on the event loop (a write()
into the page cache, tens of microseconds) and leave the fsync to one
flusher thread, which syncs every source together: one fdatasync per file
covers every record written before it started. Before
anything whose effect leaves igrtd and must be preceded by durable records (a
GO, a jog, an arm command: daemon/motion_gate.py), the loop awaits
`barrier()`, which resolves once a sync that began after the last record
written before the call has finished. Everything else is
durable within the event-loop step that wrote it and one flush (about a
millisecond on an idle disk; the flusher is woken once a step, see `_kick`),
without the loop ever waiting for a disk: an fsync on the loop used to delay a STOP by
milliseconds, tens under disk load (issue 13, items 5 and 6).

A written record is in the kernel's page cache at once, so a crash of igrtd
itself (kill -9, a bug) loses nothing; only a power loss or kernel crash
within the flush window could lose records that no motion depended on.

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


class GroupCommit:
    """One flusher thread for the sync functions of igrtd's durable stores."""

    def __init__(self, sources: list[SyncFn]) -> None:
        self._sources = list(sources)
        self._cond = threading.Condition()
        self._requested = 0  # bumped by every record written
        self._done = 0  # every record up to this generation is durable
        self._failed: str | None = None
        self._stopping = False
        self._waiters: list[tuple[int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
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
        durable, or raises DurabilityError if a sync failed (now or earlier).

        What it waits for is fixed by the call, not by when the future is first
        awaited: records bump the generation as they are written, so a flush that
        began after the last of them covers them. A GO's barrier, asked for just
        after the apply-once claim, is so met by a flush already under way that
        began after the claim, not only by one that begins after the barrier (the
        confirm path traced 1-2 ms of waiting for that needless second flush,
        issue 13 item 6)."""
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
            if self._done >= need:
                fut.set_result(None)  # nothing written since the last flush began
                return fut
            self._waiters.append((need, fut, loop))
        self._kick()
        return fut

    def _wake_flusher(self) -> None:
        with self._cond:
            self._cond.notify()

    def flush_now(self) -> None:
        """Sync every source in the calling thread (start-up, shutdown, the flusher).

        One after the other, in this one thread: syncing them side by side in a
        helper thread showed no gain on the confirm path and a thread more taking
        the interpreter lock from the event loop (the interlock-to-STOP figures of
        the same machine were worse with it)."""
        for sync in self._sources:
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
            error: str | None = None
            try:
                self.flush_now()
            except Exception as exc:  # noqa: BLE001 - any failure: nothing is vouched for
                error = f"durable write failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                log.error("%s", error)
            with self._cond:
                if error is not None and self._failed is None:
                    self._failed = error
                self._done = generation
                ready = [w for w in self._waiters if w[0] <= generation]
                self._waiters = [w for w in self._waiters if w[0] > generation]
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
