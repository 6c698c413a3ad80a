"""Shared fixtures: the procedural phantom, its planning CT and simulated CBCTs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reg3d_support import ISO, PIVOT

from safety.pose import Pose
from sim.imager import acquire_cbct, placement_for_registration, planning_ct, rigid_matrix
from sim.phantom import Phantom, make_phantom

MakeCbct = Callable[..., sitk.Image]


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture(scope="session")
def plan_ct(phantom: Phantom) -> sitk.Image:
    return planning_ct(phantom, rng=np.random.default_rng(1))


@pytest.fixture(scope="session")
def make_cbct(phantom: Phantom) -> MakeCbct:
    def make(t: np.ndarray, couch: Pose | None = None, position: str = "HFS", seed: int = 3,
             degrade: bool = True) -> sitk.Image:
        couch = couch or Pose()
        a = placement_for_registration(t, couch, PIVOT, ISO, position)
        return acquire_cbct(phantom, a, couch, PIVOT, ISO, position,
                            np.random.default_rng(seed), degrade=degrade)
    return make


@pytest.fixture(scope="session")
def setup_error() -> np.ndarray:
    """A typical set-up error: 6.3 mm, rotations 1-2 deg about each axis."""
    return rigid_matrix(ISO, (3.0, -4.0, 3.5), (1.2, -1.5, 2.0))


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory, plan_ct: sitk.Image,
                make_cbct: MakeCbct, setup_error: np.ndarray) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("images")
    plan, daily = d / "plan.mha", d / "daily.nii.gz"
    sitk.WriteImage(plan_ct, str(plan))
    sitk.WriteImage(make_cbct(setup_error), str(daily))
    return plan, daily
