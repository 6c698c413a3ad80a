"""Shared, session-scoped phantoms: rendering them is the slow part of these tests."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.drr import KvGeometry
from sim.imager import planning_ct
from sim.phantom import DEFAULT_ISO_MM, make_phantom

ISO = DEFAULT_ISO_MM
# A smaller detector than the default keeps the simulated radiographs quick.
PAIR = (KvGeometry(angle_deg=0.0, size_px=(256, 256), pixel_mm=1.2),
        KvGeometry(angle_deg=90.0, size_px=(256, 256), pixel_mm=1.2))


@pytest.fixture(scope="session")
def phantom():  # type: ignore[no-untyped-def]
    return make_phantom()


@pytest.fixture(scope="session")
def plan_ct(phantom) -> sitk.Image:  # type: ignore[no-untyped-def]
    return planning_ct(phantom, rng=np.random.default_rng(5))


@pytest.fixture(scope="session")
def point_ct() -> sitk.Image:
    """Air with one dense 10 mm sphere at planning (20, -30, 40)."""
    n, sp = 100, 2.0
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    org = -99.0
    xx, yy, zz = org + x * sp, org + y * sp, org + z * sp
    inside = (xx - 20) ** 2 + (yy + 30) ** 2 + (zz - 40) ** 2 < 25
    img = sitk.GetImageFromArray(np.where(inside, 2000.0, -1000.0).astype(np.float32))
    img.SetSpacing([sp] * 3)
    img.SetOrigin([org] * 3)
    return img
