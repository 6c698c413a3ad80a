"""The review planes: where the three orthogonal slices through the isocentre lie,
how an image is sampled on them, and how the daily image's values are put on
the planning CT's scale.

Shared by the PNG overlay (imaging/overlay.py) and the browser console's review
images (imaging/review_slices.py), so a therapist sees the same planes, the
same way up and with the same intensities whichever of the two they look at.

Display conventions are the radiological ones: rows and columns are already in
display order (row 0 at the top, column 0 at the left); axial viewed from the
feet (patient right on the viewer's left, anterior up), coronal from the front,
sagittal from the patient's left (anterior on the viewer's left). The
isocentre is at pixel ((n-1)/2, (n-1)/2).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imaging.review_messages import PLANES

FOV_MM = 220.0
PIXEL_MM = 1.0


def plane_size() -> int:
    """Pixels per side of a review plane (FOV_MM at PIXEL_MM)."""
    return round(FOV_MM / PIXEL_MM)


def plane_grid(iso: np.ndarray, plane: str) -> tuple[list[float], list[float], list[float],
                                                       list[int]]:
    """(origin, spacing, direction, size) of a one-voxel-thick slice image whose rows and
    columns are already in display order (column index -> viewer right, row -> down)."""
    n = plane_size()
    h = (n - 1) * PIXEL_MM / 2.0
    ex, ey, ez = np.eye(3)
    if plane == "axial":  # columns +x (patient left), rows +y (posterior)
        u, v = ex, ey
    elif plane == "coronal":  # columns +x, rows -z (superior up)
        u, v = ex, -ez
    elif plane == "sagittal":  # columns +y (anterior left), rows -z
        u, v = ey, -ez
    else:
        raise ValueError(f"unknown plane {plane!r}; one of {', '.join(PLANES)}")
    w = np.cross(u, v)
    origin = iso - h * u - h * v
    direction = np.stack([u, v, w], axis=1)  # columns are the image axes
    return (
        [float(c) for c in origin], [PIXEL_MM, PIXEL_MM, 1.0],
        [float(c) for c in direction.ravel()], [n, n, 1],
    )


def slice_plane(img: sitk.Image, iso: np.ndarray, plane: str,
                tx: sitk.Transform) -> np.ndarray:
    """`img` sampled on `plane` through `iso` (float32, rows x cols), through `tx`
    (fixed -> image points); NaN where the plane leaves the image."""
    origin, spacing, direction, size = plane_grid(iso, plane)
    out = sitk.Resample(
        img, size, tx, sitk.sitkLinear, origin, spacing, direction, float("nan"), sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)[0]


def affine(matrix: np.ndarray) -> sitk.AffineTransform:
    """The ITK transform of a 4x4 fixed -> moving matrix."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in matrix[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in matrix[:3, 3]])
    return tx


def intensity_map(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float, float]:
    """(scale, offset, lo, hi): daily value -> planning scale, and the display window.

    The daily image (CBCT) has its own HU scale and offset, so it is mapped
    linearly onto the planning CT's by matching the 10th and 90th percentiles
    over the pixels both images cover (after registration, so the same anatomy
    is compared). One window is then used for both: a wide CT window
    (-600..600 HU: lungs, soft tissue and bone all distinct) when the planning
    image is in HU, else its own 1st..99th percentiles.
    """
    f_all = np.concatenate([f[np.isfinite(f) & np.isfinite(m)] for f, m in pairs])
    m_all = np.concatenate([m[np.isfinite(f) & np.isfinite(m)] for f, m in pairs])
    if f_all.size < 100:
        return 1.0, 0.0, -600.0, 600.0
    f10, f90 = np.percentile(f_all, [10, 90])
    m10, m90 = np.percentile(m_all, [10, 90])
    scale = float((f90 - f10) / (m90 - m10)) if m90 - m10 > 1e-6 else 1.0
    offset = float(f10 - m10 * scale)
    if float(f_all.min()) < -500.0:
        return scale, offset, -600.0, 600.0
    lo, hi = np.percentile(f_all, [1, 99])
    return scale, offset, float(lo), float(hi)
