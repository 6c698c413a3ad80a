"""What the QA phantom's marker finders share: input checks, the search crop, the light
smoothing, and the conversions between array indices and physical positions.

The BB finder (imaging.qa_bb) and the air-hole finder (imaging.qa_air_holes) look for
small spheres, bright and dark, in the same CBCTs under the same rules: a scalar 3D
image, an optional search sphere about an expected position, answers in the image's
physical frame (DICOM LPS, mm) while the voxel arrays are indexed (z, y, x). Keeping
those rules here keeps the two finders' frames and refusals the same.

Every refusal is a one-line ValueError: the finders' error type, whose text callers
(igrtd's QA workflow) report as it is.

Pure computation on an image already read: no file or device access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import SupportsFloat

import numpy as np
import SimpleITK as sitk

__all__ = [
    "CENTROID_ITERATIONS",
    "check_inputs",
    "crop_to_search",
    "finite_number",
    "fmt_mm",
    "index_to_physical",
    "local_box",
    "physical_to_index",
    "smooth",
    "squared_distance_mm2",
    "voxels_of",
]

# Passes of a marker's soft-thresholded centroid (each re-centres its window).
CENTROID_ITERATIONS = 3


def fmt_mm(p: Sequence[float] | np.ndarray) -> str:
    """A point for a one-line message: (x, y, z) to 0.1, without "-0.0"."""
    return "(" + ", ".join(f"{round(float(v), 1) + 0.0:.1f}" for v in p) + ")"


def finite_number(value: object, what: str, unit: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in {unit}, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} is not a finite number: {v!r} {unit}")
    return v


def check_inputs(
    image: sitk.Image, expected_mm: Sequence[float] | None, search_radius_mm: float,
    min_contrast_hu: float, max_diameter_mm: float,
) -> tuple[np.ndarray | None, float, float, float]:
    """The image checked, and (expected position or None, search radius, contrast,
    diameter) as finite positive numbers; a one-line ValueError otherwise.

    The messages name the BB finder even when the air-hole finder calls: they always
    have, and callers may match on them."""
    if not isinstance(image, sitk.Image):
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"find_bb needs a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(f"BB image must be 3D, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("BB image must be scalar (one component per voxel)")
    if min(image.GetSize()) < 3:
        raise ValueError(f"BB image is too small ({image.GetSize()} voxels)")
    radius = finite_number(search_radius_mm, "search_radius_mm", "mm")
    if not radius > 0:
        raise ValueError(f"search_radius_mm {radius:g} mm must be greater than 0 mm")
    contrast = finite_number(min_contrast_hu, "min_contrast_hu", "HU")
    if not contrast > 0:
        raise ValueError(f"min_contrast_hu {contrast:g} HU must be greater than 0 HU")
    diameter = finite_number(max_diameter_mm, "max_diameter_mm", "mm")
    if not diameter > 0:
        raise ValueError(f"max_diameter_mm {diameter:g} mm must be greater than 0 mm")
    expected: np.ndarray | None = None
    if expected_mm is not None:
        if len(expected_mm) != 3:
            raise ValueError(f"expected_mm must be 3 numbers (x, y, z mm), got {len(expected_mm)}")
        expected = np.array([finite_number(v, f"expected_mm {k}", "mm")
                             for k, v in zip("xyz", expected_mm)])
    return expected, radius, contrast, diameter


def crop_to_search(image: sitk.Image, expected: np.ndarray, radius: float,
                   margin_mm: float, what: str) -> sitk.Image:
    """The sub-image covering the search sphere plus a margin (any direction cosines);
    `what` ("BB", "air hole") names the marker when the sphere misses the image."""
    half = radius + margin_mm
    size = np.array(image.GetSize())
    corners = np.array([
        image.TransformPhysicalPointToContinuousIndex(
            [float(expected[i] + (half if b else -half)) for i, b in enumerate(bits)])
        for bits in np.ndindex(2, 2, 2)
    ])
    lo = np.floor(corners.min(axis=0)).astype(int)
    hi = np.ceil(corners.max(axis=0)).astype(int)
    lo_c, hi_c = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    if np.any(hi < 0) or np.any(lo > size - 1) or np.any(hi_c - lo_c + 1 < 3):
        raise ValueError(
            f"no {what} search: the sphere of {radius:g} mm about the expected position "
            f"{fmt_mm(expected)} mm lies outside the image")
    return sitk.RegionOfInterest(image, [int(v) for v in hi_c - lo_c + 1], [int(v) for v in lo_c])


def voxels_of(crop: sitk.Image, what: str) -> np.ndarray:
    """The crop's voxels (z, y, x; float32), refused when any is not a finite number:
    a NaN would poison every median and centroid downstream."""
    a = sitk.GetArrayFromImage(crop).astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} image holds voxels that are not finite numbers")
    return a


def smooth(a: np.ndarray) -> np.ndarray:
    """Binomial (1, 2, 1)/4 along each axis, edges replicated."""
    out = a.astype(np.float32, copy=True)
    for axis in range(3):
        if out.shape[axis] < 3:
            continue
        src = out.copy()
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], mid[axis], hi[axis] = slice(0, -2), slice(1, -1), slice(2, None)
        out[tuple(mid)] = (src[tuple(lo)] + 2.0 * src[tuple(mid)] + src[tuple(hi)]) * 0.25
        first, second = [slice(None)] * 3, [slice(None)] * 3
        first[axis], second[axis] = slice(0, 1), slice(1, 2)
        out[tuple(first)] = (3.0 * src[tuple(first)] + src[tuple(second)]) * 0.25
        last, before = [slice(None)] * 3, [slice(None)] * 3
        last[axis], before[axis] = slice(-1, None), slice(-2, -1)
        out[tuple(last)] = (3.0 * src[tuple(last)] + src[tuple(before)]) * 0.25
    return out


def local_box(a: np.ndarray, peak: Sequence[int], reach: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """The voxels within +-reach of `peak` (cut at the array's edge, float64) and their
    array indices (3, ...): the window a marker's centroid is taken over."""
    lo = np.maximum(np.array(peak) - reach, 0)
    hi = np.minimum(np.array(peak) + reach + 1, np.array(a.shape))
    box = a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
    grid = np.stack(np.meshgrid(*(np.arange(lo[i], hi[i]) for i in range(3)), indexing="ij"))
    return box, grid.astype(np.float64)


def index_to_physical(image: sitk.Image, index_zyx: Sequence[SupportsFloat] | np.ndarray
                      ) -> tuple[float, float, float]:
    """The physical point (x, y, z mm) of a continuous array index (z, y, x) of `image`."""
    p = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_zyx[::-1]])
    return (float(p[0]), float(p[1]), float(p[2]))


def physical_to_index(image: sitk.Image, point_mm: Sequence[float] | np.ndarray) -> np.ndarray:
    """The continuous array index (z, y, x) of a physical point (x, y, z mm) of `image`."""
    return np.array(image.TransformPhysicalPointToContinuousIndex(
        [float(v) for v in point_mm]))[::-1]


def squared_distance_mm2(shape: Sequence[int], centre_zyx: np.ndarray,
                         spacing_zyx: np.ndarray) -> np.ndarray:
    """Squared distance (mm^2) of every voxel of an array of `shape` from a continuous
    index: the test for "inside the search sphere"."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    d2: np.ndarray = (((z - centre_zyx[0]) * spacing_zyx[0]) ** 2
                      + ((y - centre_zyx[1]) * spacing_zyx[1]) ** 2
                      + ((x - centre_zyx[2]) * spacing_zyx[2]) ** 2)
    return d2
