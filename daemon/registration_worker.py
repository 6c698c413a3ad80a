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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

# No numpy here: igrtd unpickles these from the worker (imaging/review_messages.py).
from imaging.review_messages import ReviewMessages, ReviewRequest

if TYPE_CHECKING:  # numpy and SimpleITK are loaded in the worker, not in igrtd
    import SimpleITK as sitk

    from imaging.registration_result import RegistrationResult

log = logging.getLogger("igrt.registration")
T = TypeVar("T")

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


@dataclass(frozen=True)
class QaBb:
    """The QA phantom's BB found in a baseline image (image physical frame, DICOM LPS, mm)."""

    position_mm: tuple[float, float, float]
    peak_hu: float
    voxels: int


@dataclass(frozen=True)
class QaShift:
    """A QA image measured against the baseline (`_qa_shift_files`).

    `shift`: how the BB moved in the room and how the table top turned (x, y, z mm;
    yaw, pitch, roll deg), relative to the baseline (safety.qa_geometry.room_shift_from_registration).
    `couch`: the same motion as a couch delta from the QA home pose (lat, long, vert mm;
    yaw, pitch, roll deg; safety.qa_geometry.couch_delta_from_room_shift), what a commanded
    QA move is compared with. `bb_mm`: the BB in this image (DICOM LPS, mm).
    The motion is a rigid fit of the phantom's fiducials, not an image registration:
    `converged` is True (a fit that fails refuses with ValueError instead) and `metric`
    is the fit's residual RMS in mm (its fiducials' disagreement with a rigid motion;
    ~0.05 mm on a good image). `fiducials_mm`: the fiducials found in this image
    (BB first, then the air holes; DICOM LPS, mm)."""

    shift: tuple[float, float, float, float, float, float]
    couch: tuple[float, float, float, float, float, float]
    converged: bool
    metric: float
    reason: str = ""
    bb_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fiducials_mm: tuple[tuple[float, float, float], ...] = ()


# The BB is found again within this of where it was in the baseline (the QA envelope's
# 25 mm and the lever arm of a 2.5 deg rotation stay inside).
QA_BB_SEARCH_MM = 40.0
# An air hole is searched this far about where it is expected: in the baseline, the BB's
# position plus the phantom geometry's offset (a phantom laid within ~2 deg of the
# lasers); later, its baseline position moved by the BB's displacement (a 2.5 deg QA
# rotation moves a hole ~80 mm from the BB by 3.5 mm). The holes sit 30 mm or more from
# the cube's faces and from each other, so nothing else dark is in reach.
QA_HOLE_SEARCH_MM = 10.0
Six = tuple[float, float, float, float, float, float]
Vec3 = tuple[float, float, float]
# An air hole of the QA phantom relative to its BB: (offset in the image frame (DICOM
# LPS, mm) at the baseline, radius mm). daemon/qa_workflow.py builds them from the
# phantom's geometry.
QaHole = tuple[Vec3, float]


def _qa_bb_file(image: str, expected_mm: tuple[float, float, float],
                search_radius_mm: float) -> QaBb:
    """Runs in the worker: read a QA image and find its one BB (ValueError otherwise)."""
    from imaging.qa_bb import find_bb
    from imaging.volumes import read_image

    found = find_bb(read_image(image).image, expected_mm, search_radius_mm)
    p = found.position_mm
    return QaBb((float(p[0]), float(p[1]), float(p[2])), float(found.peak_hu), int(found.voxels))


def _v3(p: Any) -> Vec3:  # a sequence or numpy array of 3 numbers
    return (float(p[0]), float(p[1]), float(p[2]))


def _qa_shift_files(baseline: str, image: str, bb_mm: tuple[float, float, float],
                    bb_room_mm: tuple[float, float, float], home: Six,
                    pivot_mm: tuple[float, float, float],
                    holes: tuple[QaHole, ...] = ()) -> QaShift:
    """Runs in the worker: how the phantom moved from `baseline` to `image`.

    From fiducials, not an image registration (a rigid registration of the nearly
    featureless cube fell into rotations 0.2 deg off, which the couch's pivot lever turns
    into 0.5-0.8 mm of false long/lat error): the BB (imaging.qa_bb.find_bb) and the
    phantom's air holes (imaging.qa_air_holes.find_air_hole) are found in both images to a
    fraction of a voxel and a least-squares rigid fit (safety.qa_geometry.rigid_fit) of the
    baseline's onto this image's gives the ITK fixed -> moving matrix. Its translation
    is then set so that it maps the baseline's BB exactly onto this image's (the BB is
    the best-found point; the fit's rotation stands), for
    safety.qa_geometry.room_shift_from_registration. `bb_mm`: the BB in the baseline; `holes`:
    each air hole's offset from the BB in the baseline image (DICOM, mm) and radius (at
    least two, not in line with the BB); `bb_room_mm`: the BB's room position at the
    home pose (where the phantom was set up); `home`, `pivot_mm`: the couch's, for the
    couch delta. ValueError (one line) when a fiducial is not found or the fit's
    residual says one was misfound."""
    import numpy as np

    from imaging.qa_air_holes import find_air_hole
    from imaging.qa_bb import find_bb
    from imaging.volumes import read_image
    from safety.pose import Pose
    from safety.qa_geometry import (
        couch_delta_from_room_shift,
        rigid_fit,
        room_shift_from_registration,
    )

    if len(holes) < 2:
        raise ValueError(f"QA measurement needs at least 2 air holes of the phantom besides "
                         f"its BB, got {len(holes)}")
    fixed = read_image(baseline).image
    moving = read_image(image).image
    bb0 = np.asarray(bb_mm, dtype=float)
    bb1 = np.asarray(find_bb(moving, bb_mm, QA_BB_SEARCH_MM).position_mm, dtype=float)
    moved = bb1 - bb0
    before: list[Vec3] = [_v3(bb0)]
    after: list[Vec3] = [_v3(bb1)]
    for k, (offset, radius) in enumerate(holes):
        at = bb0 + np.asarray(offset, dtype=float)
        try:
            h0 = np.asarray(find_air_hole(fixed, _v3(at), radius, QA_HOLE_SEARCH_MM)
                            .position_mm, dtype=float)
        except ValueError as exc:
            raise ValueError(f"air hole {k + 1} in the baseline: {exc}") from None
        try:
            h1 = find_air_hole(moving, _v3(h0 + moved), radius, QA_HOLE_SEARCH_MM).position_mm
        except ValueError as exc:
            raise ValueError(f"air hole {k + 1}: {exc}") from None
        before.append(_v3(h0))
        after.append(_v3(h1))
    fit = rigid_fit(before, after)
    matrix = np.array(fit.matrix, dtype=float)
    matrix[:3, 3] = bb1 - matrix[:3, :3] @ bb0  # T(bb in the baseline) = bb in this image
    shift = room_shift_from_registration(matrix, "HFS", bb_mm)
    couch = couch_delta_from_room_shift(shift, Pose(*home), pivot_mm, bb_room_mm)
    return QaShift(shift.as_tuple(), couch.as_tuple(), True, float(fit.rms_mm), "",
                   _v3(bb1), tuple(after))


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

    async def _in_worker(self, fn: Callable[..., T], *args: object) -> T:
        async with self._turn:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._executor(), fn, *args)
            except BrokenProcessPool:
                self._discard()
                raise RegistrationFailed("the registration worker process ended unexpectedly; "
                                         "try again") from None

    async def qa_bb(self, image: str, expected_mm: tuple[float, float, float],
                    search_radius_mm: float) -> QaBb:
        """The BB of a QA baseline image, found in the worker; ValueError (one line) when
        the image cannot be read or holds no BB or more than one."""
        return await self._in_worker(_qa_bb_file, image, expected_mm, search_radius_mm)

    async def qa_shift(self, baseline: str, image: str, bb_mm: tuple[float, float, float],
                       bb_room_mm: tuple[float, float, float], home: Six,
                       pivot_mm: tuple[float, float, float],
                       holes: tuple[QaHole, ...] = ()) -> QaShift:
        """`image` measured against `baseline` from the phantom's fiducials (BB and air
        holes), in the worker (daemon/qa_workflow.py)."""
        return await self._in_worker(_qa_shift_files, baseline, image, bb_mm, bb_room_mm, home,
                                     pivot_mm, holes)

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
