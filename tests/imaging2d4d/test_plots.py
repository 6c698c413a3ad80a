"""Review PNGs are drawn without a plotting library."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imaging.fourd import FourDResult, PhaseResult
from imaging.plots import deviation_png, trajectory_png


def test_trajectory_png_is_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    phases = tuple(PhaseResult(k, 0.25, (0.0, 0.5 * k, -2.0 * k), (0.0, 0.5 * k, -2.0 * k), 0.9)
                   for k in range(4))
    result = FourDResult(initial=np.eye(4), target_mm=(0, 0, 0), phases=phases,
                         mean_position_mm=(0, 0.75, -3), mean_displacement_mm=(0, 0.75, -3),
                         amplitude_mm=(0, 1.5, 6), principal_amplitude_mm=6.2,
                         principal_direction=(0, 0.24, -0.97), seconds=0.1, converged=True)
    trajectory_png(result, tmp_path / "t.png")
    assert Image.open(tmp_path / "t.png").size == (720, 420)


def test_deviation_png_shades_hold_intervals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    deviation_png([0, 1, 2, 3], [0.5, 2.5, 2.5, 0.5], 2.0, [(1.0, 2.5)], tmp_path / "d.png")
    img = Image.open(tmp_path / "d.png").convert("RGB")
    assert (255, 220, 200) in {c for _, c in img.getcolors(100000)}


def test_deviation_png_without_samples_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="no samples"):
        deviation_png([], [], 2.0, [], tmp_path / "d.png")
