"""Review overlay PNG: three planes, before and after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reg3d_support import ISO

from imaging.overlay import write_overlay_png


def test_overlay_png_shows_three_planes_before_and_after(tmp_path: Path, plan_ct, make_cbct,
                                                         setup_error) -> None:
    out = write_overlay_png(plan_ct, make_cbct(setup_error), setup_error, ISO,
                            tmp_path / "sub" / "overlay.png")
    img = Image.open(out)
    assert img.mode == "RGB"
    assert img.width > 4 * 200 and img.height > 3 * 200  # 4 columns x 3 planes


def _misfit(png: Path) -> tuple[float, float]:
    """Mean |magenta - green| in the before and after fusion panels."""
    a = np.asarray(Image.open(png)).astype(float)
    diff = np.abs(a[..., 0] - a[..., 1])
    w = a.shape[1]
    # columns: label, before fusion, before checker, after fusion, after checker
    before = diff[40:, 70:70 + (w - 70) // 4]
    after = diff[40:, 70 + (w - 70) // 2:70 + 3 * (w - 70) // 4]
    return float(before.mean()), float(after.mean())


def test_after_panel_fits_better_than_before_with_the_true_registration(
    tmp_path: Path, plan_ct, make_cbct, setup_error
) -> None:
    daily = make_cbct(setup_error, degrade=False)  # noise would blur the comparison
    png = write_overlay_png(plan_ct, daily, setup_error, ISO, tmp_path / "o.png")
    before, after = _misfit(png)
    assert after < 0.7 * before


def test_overlay_without_registration_still_renders(tmp_path: Path, plan_ct, make_cbct,
                                                    setup_error) -> None:
    assert write_overlay_png(plan_ct, make_cbct(setup_error), None, ISO,
                             tmp_path / "o.png").exists()


def test_overlay_rejects_a_bad_isocentre(tmp_path: Path, plan_ct, make_cbct, setup_error) -> None:
    with pytest.raises(ValueError, match="isocentre"):
        write_overlay_png(plan_ct, make_cbct(setup_error), None, (1.0, 2.0), tmp_path / "o.png")
