"""igrtd registers images in a worker process of its own (daemon/registration_worker.py):
the event loop that reads the PLC and writes STOP never shares the interpreter
with a registration."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from daemon.registration_worker import (
    WORKER_NICE,
    Registered,
    RegistrationFailed,
    RegistrationWorker,
)


def _volume(shift_x_mm: float) -> sitk.Image:
    z, y, x = np.mgrid[0:40, 0:56, 0:56].astype(np.float32)
    sx = shift_x_mm / 2.0
    a = np.exp(-(((x - 28 - sx) / 8) ** 2 + ((y - 28) / 10) ** 2 + ((z - 20) / 6) ** 2)) * 1000
    a += np.exp(-(((x - 18 - sx) / 4) ** 2 + ((y - 36) / 5) ** 2 + ((z - 16) / 4) ** 2)) * 800
    img = sitk.GetImageFromArray(a - 1000.0)
    img.SetSpacing((2.0, 2.0, 2.5))
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("reg")
    sitk.WriteImage(_volume(0.0), str(d / "fixed.mha"))
    sitk.WriteImage(_volume(3.0), str(d / "moving.mha"))
    return str(d / "fixed.mha"), str(d / "moving.mha")


def _worker_pids(worker: RegistrationWorker) -> list[int]:
    pool = worker._pool
    assert pool is not None
    return [p.pid for p in pool._processes.values() if p.pid is not None]  # type: ignore[attr-defined]


def test_a_registration_runs_in_another_process_at_lower_priority(images: tuple[str, str]) -> None:
    async def go() -> tuple[float, list[int], list[int]]:
        worker = RegistrationWorker()
        try:
            result = await worker.register_rigid(*images, None)
            pids = _worker_pids(worker)
            return (result.translation_mm[0], pids,
                    [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids])
        finally:
            worker.close()

    tx, pids, nices = asyncio.run(go())
    assert tx == pytest.approx(3.0, abs=0.2)
    assert pids and os.getpid() not in pids
    assert nices == [max(WORKER_NICE, os.getpriority(os.PRIO_PROCESS, 0))]


def test_a_missing_image_is_refused_in_one_line(images: tuple[str, str], tmp_path: Path) -> None:
    async def go() -> None:
        worker = RegistrationWorker()
        try:
            await worker.register_rigid(str(tmp_path / "nope.mha"), images[1], None)
        finally:
            worker.close()

    with pytest.raises(ValueError, match="does not exist") as info:
        asyncio.run(go())
    assert "\n" not in str(info.value)


def test_a_killed_worker_is_reported_and_replaced(images: tuple[str, str]) -> None:
    async def go() -> float:
        worker = RegistrationWorker()
        try:
            await worker.register_rigid(*images, None)
            for pid in _worker_pids(worker):
                os.kill(pid, 9)
            with pytest.raises(RegistrationFailed, match="ended unexpectedly"):
                await worker.register_rigid(*images, None)
            return (await worker.register_rigid(*images, None)).translation_mm[0]
        finally:
            worker.close()

    assert asyncio.run(go()) == pytest.approx(3.0, abs=0.2)


def test_the_worker_returns_the_review_messages_with_the_registration(
        images: tuple[str, str]) -> None:
    from imaging.review_messages import ReviewMessages, ReviewRequest

    async def go() -> Registered:
        worker = RegistrationWorker()
        try:
            return await worker.register(*images, None, review=ReviewRequest(
                "room1", "reg-0123456789ab", "plan", "daily", (56.0, 56.0, 50.0)))
        finally:
            worker.close()

    done = asyncio.run(go())
    assert done.result.converged and done.review_error == ""
    # A numpy-free type: igrtd unpickles it without loading the imaging stack.
    assert type(done.review) is ReviewMessages
    meta = json.loads(done.review.meta)
    assert meta["registration_id"] == "reg-0123456789ab" and meta["iso_mm"] == [56.0, 56.0, 50.0]
    assert meta["matrix"] == done.result.to_json_dict()["matrix"]
    assert len(done.review.images) == 9


def test_a_review_that_cannot_be_made_leaves_the_registration_standing(
        images: tuple[str, str]) -> None:
    from imaging.review_messages import ReviewRequest

    async def go() -> Registered:
        worker = RegistrationWorker()
        try:
            return await worker.register(*images, None, review=ReviewRequest(
                "room1", "reg-0123456789ab", "plan", "daily", (float("nan"), 0.0, 0.0)))
        finally:
            worker.close()

    done = asyncio.run(go())
    assert done.result.translation_mm[0] == pytest.approx(3.0, abs=0.2)
    assert done.review is None and "isocentre" in done.review_error
