"""Image registration in a process of its own, beside igrtd's event loop.

A rigid registration is a second or so of numpy and SimpleITK work. In a
thread of igrtd it shared the interpreter lock with the event loop, which
then waited up to a whole switch interval (5 ms) at a time to read the PLC or
write a STOP: interlock-to-STOP grew by several milliseconds while a
registration ran (issue 13, item 5). In a worker process it competes with
igrtd only for a core, and the worker runs at a lower priority (nice +10), so
igrtd, which runs at -10, takes the CPU the moment a PLC answer arrives.

One worker, started on the first registration and kept warm (importing
SimpleITK and numpy takes about a second); a second registration asked for
while one runs waits its turn. It dies with igrtd (PR_SET_PDEATHSIG), and a
worker that dies (killed, out of memory) is replaced on the next call; the
call it was running is refused with a one-line reason. Only file paths (and
the labels of a review) go to the worker and only the result (and the review's
encoded messages) comes back.

Asked for (`register(..., review=ReviewRequest(...))`), the worker also makes
the browser console's review images of a converged registration while it has
both images loaded, and encodes them as the MQTT messages igrtd publishes
(imaging/review_slices.py): igrtd's loop only passes the bytes on. The review
is an addition: if it cannot be made, the registration stands and the reason
is logged.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

# No numpy here: igrtd unpickles these from the worker (imaging/review_messages.py).
from imaging.review_messages import ReviewMessages, ReviewRequest

if TYPE_CHECKING:  # numpy and SimpleITK are loaded in the worker, not in igrtd
    import SimpleITK as sitk

    from imaging.registration_result import RegistrationResult

log = logging.getLogger("igrt.registration")

# Below igrtd (Nice=-10 in systemd/igrtd.service) and below ordinary work.
WORKER_NICE = 10
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
_PR_SET_PDEATHSIG = 1


class RegistrationFailed(Exception):
    """The registration could not be run (bad input, worker lost); str() is one line."""


@dataclass(frozen=True)
class Registered:
    """A registration and, when asked for and it converged, its review messages."""

    result: RegistrationResult
    review: ReviewMessages | None = None
    # Why there is no review although one was asked for ("" otherwise): one line,
    # for igrtd's log (the worker's own log line may not reach the journal).
    review_error: str = ""


def _worker_init(parent: int) -> None:
    """In the worker: one core, lower priority, die with igrtd."""
    # One thread for numpy's BLAS and for every ITK filter (read before either is
    # loaded): on the 2-core console host the other core stays free for igrtd's
    # loop and the devices it talks to. SCHED_BATCH: the worker never preempts a
    # waking process; it fills the CPU time nothing else wants.
    for var in _ONE_THREAD:
        os.environ[var] = "1"
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):  # not Linux, or not permitted: nice alone
        pass
    try:
        # Absolute, not relative: the worker inherits igrtd's -10.
        os.setpriority(os.PRIO_PROCESS, 0, max(WORKER_NICE, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:  # not permitted: it runs at igrtd's priority
        pass
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # igrtd died before the signal was armed
        os._exit(1)


def _register_files(fixed: str, moving: str, iso: tuple[float, float, float] | None,
                    roi_half_mm: float | None = None,
                    review: ReviewRequest | None = None) -> Registered:
    """Runs in the worker: read both images, register them and, if asked for and
    the registration converged, make its review messages."""
    from imaging.registration import register_rigid
    from imaging.volumes import read_image

    f = read_image(fixed)
    m = read_image(moving)
    result = register_rigid(f.image, m.image, iso_mm=iso, roi_half_mm=roi_half_mm)
    if review is None or not result.converged:
        return Registered(result)
    try:
        messages = _review(f.image, m.image, result, iso, review)
    except Exception as exc:  # the review is an addition: the registration stands
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        log.warning("review images of registration %s not made: %s", review.registration_id,
                    reason, exc_info=True)
        return Registered(result, None, reason)
    return Registered(result, messages)


def _review(fixed: sitk.Image, moving: sitk.Image, result: RegistrationResult,
            iso: tuple[float, float, float] | None, review: ReviewRequest) -> ReviewMessages:
    from imaging.registration import image_centre
    from imaging.review_slices import encode_review, review_slices

    # The planes cross where asked, else where the registration was centred.
    centre = review.iso_mm or iso or image_centre(moving)
    return encode_review(review_slices(fixed, moving, result.matrix, centre), review, time.time())


class RegistrationWorker:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._turn = asyncio.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(os.getpid(),))
        return self._pool

    async def register_rigid(self, fixed: str, moving: str,
                             iso: tuple[float, float, float] | None, *,
                             roi_half_mm: float | None = None) -> RegistrationResult:
        """The registration of `moving` to `fixed`; ValueError for bad input (one line),
        RegistrationFailed when the worker was lost."""
        return (await self.register(fixed, moving, iso, roi_half_mm=roi_half_mm)).result

    async def register(self, fixed: str, moving: str,
                       iso: tuple[float, float, float] | None, *,
                       roi_half_mm: float | None = None,
                       review: ReviewRequest | None = None) -> Registered:
        """As `register_rigid`, with the review messages of a converged registration
        when `review` asks for them (None, with the reason, if they failed)."""
        async with self._turn:
            loop = asyncio.get_running_loop()
            try:
                done = await loop.run_in_executor(self._executor(), _register_files,
                                                  fixed, moving, iso, roi_half_mm, review)
            except BrokenProcessPool:
                self._discard()
                raise RegistrationFailed("the registration worker process ended unexpectedly; "
                                         "try again") from None
        if done.review_error:
            log.warning("review images of registration %s not made: %s",
                        review.registration_id if review else "?", done.review_error)
        return done

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker (igrtd is stopping); a running registration is abandoned."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            # Abandoned work: nothing waits for it, so do not wait for it either.
            if proc.is_alive():
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
