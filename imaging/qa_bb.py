"""Finding the BB (a small dense sphere) of a QA phantom in a CBCT.

`find_bb(image)` returns the BB's centre in the image's physical frame (DICOM
LPS, mm) to a fraction of a voxel, or refuses with a one-line ValueError when
the image holds no BB or more than one. How, and why it survives a CBCT:

1. Detection on a lightly smoothed copy (binomial 1-2-1 per axis: single-voxel
   noise is cut about four times) with a white top-hat: the image minus its
   grey opening by a box wider than the largest BB (separable running min and
   max, a fraction of a second on a 240x240x100 CBCT). The opening removes
   every bright thing smaller than the box and keeps everything larger, so the
   top-hat is the contrast of small bright objects over their own
   surroundings: cupping and shading (slow), the phantom's flat faces and
   axis-aligned edges (the box fits them) and the outside-the-field padding
   drop out; thin streaks survive only at their own, low amplitude.
2. Candidates: connected regions of top-hat >= the contrast threshold (default
   500 HU, raised on very noisy images to 12 sd of the smoothed noise). A
   candidate is BB-like when the region around its peak where the top-hat is
   at least half the peak is at most `max_diameter_mm` across in every
   direction (grown from the peak, not cut at the threshold, so a fragment of
   a streak or a sheet that barely clears the threshold grows back into it),
   and when it is not cut by the image's edge. Longer things (a streak, the
   couch skin, a tilted edge) are not BBs: ignored, and counted in the error.
3. Position, on the unsmoothed image (imaging.qa_bb_position): a soft-thresholded
   intensity-weighted centroid about the peak, then a robust fit of a sphere with a
   Gaussian-blurred edge from it, which removes the centroid's sampling bias along
   thick slices. Should the fit fail, the centroid is returned and `method` says so.

The input checks, the search crop and the frame conversions are shared with the
air-hole finder (imaging.qa_markers, imaging.qa_air_holes).

Pure computation on an image already read: no file or device access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsFloat

import numpy as np
import SimpleITK as sitk

from imaging.qa_bb_position import BbEstimate, centroid, fit_sphere
from imaging.qa_markers import (
    check_inputs,
    crop_to_search,
    fmt_mm,
    index_to_physical,
    physical_to_index,
    smooth,
    squared_distance_mm2,
    voxels_of,
)

__all__ = ["BbFound", "find_bb"]

# A BB must stand this far above what surrounds it (top-hat contrast, HU).
DEFAULT_MIN_CONTRAST_HU = 500.0
# Largest object accepted as a BB (its half-maximum core), mm.
DEFAULT_MAX_DIAMETER_MM = 10.0
# On the smoothed image, a candidate must also clear this many sd of its noise.
NOISE_FACTOR = 12.0


@dataclass(frozen=True)
class BbFound:
    position_mm: tuple[float, float, float]  # image physical frame (DICOM LPS)
    peak_hu: float  # brightest voxel of the BB
    voxels: int  # voxels that weighed in the centroid
    background_hu: float = 0.0  # median of the shell around it
    contrast_hu: float = 0.0  # top-hat contrast of the detection
    method: str = "sphere fit"  # or "centroid" when the fit was not trustworthy

    def to_json_dict(self) -> dict[str, object]:
        return {
            "position_mm": [float(v) for v in self.position_mm],
            "peak_hu": float(self.peak_hu),
            "voxels": int(self.voxels),
            "background_hu": float(self.background_hu),
            "contrast_hu": float(self.contrast_hu),
            "method": self.method,
        }


@dataclass(frozen=True)
class _Candidate:
    peak_index: tuple[int, int, int]  # array order (z, y, x) in the crop
    contrast: float  # top-hat at the peak
    core_extent_mm: float  # largest extent of the half-maximum core
    compact: bool  # BB-like: small and whole
    at_edge: bool  # cut by the image's (or the search region's) edge


def _noise_sd(a: np.ndarray, s: np.ndarray) -> float:
    """Robust sd of the voxel noise: MAD of (image - smoothed), corrected for the
    binomial kernel (sd of a - s is 0.896 sd of white noise)."""
    r = (a - s).ravel()
    if r.size > 400_000:
        r = r[:: r.size // 400_000]
    mad = float(np.median(np.abs(r - np.median(r))))
    return 1.4826 * mad / 0.896


def _running(a: np.ndarray, axis: int, radius: int, minimum: bool) -> np.ndarray:
    """Min (or max) over the window index +-radius along one axis; the window is cut at
    the image's edge (padding that never wins). Sparse table: O(log radius) passes."""
    if radius <= 0 or a.shape[axis] == 1:
        return a
    op = np.minimum if minimum else np.maximum
    fill = np.float32(np.inf if minimum else -np.inf)
    pad = [(0, 0)] * 3
    pad[axis] = (radius, radius)
    m = np.pad(a, pad, constant_values=fill)
    k = 2 * radius + 1
    length = 1

    def sl(start: int, stop: int | None) -> tuple[slice, ...]:
        out = [slice(None)] * 3
        out[axis] = slice(start, stop)
        return tuple(out)

    while 2 * length <= k:
        m = op(m[sl(0, -length)], m[sl(length, None)])
        length *= 2
    n = a.shape[axis]
    return op(m[sl(0, n)], m[sl(k - length, k - length + n)])


def _top_hat(s: np.ndarray, radius_zyx: Sequence[int]) -> np.ndarray:
    """s minus its grey opening by a box of half-size `radius_zyx` voxels."""
    opened = s
    for axis, r in enumerate(radius_zyx):
        opened = _running(opened, axis, int(r), True)
    for axis, r in enumerate(radius_zyx):
        opened = _running(opened, axis, int(r), False)
    return s - opened


def _candidates(th: np.ndarray, threshold: float, spacing_zyx: np.ndarray,
                max_diameter: float) -> list[_Candidate]:
    mask = th >= threshold
    if not mask.any():
        return []
    labels = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    flat = np.flatnonzero(mask)
    lab = labels.ravel()[flat]
    order = np.argsort(lab, kind="stable")
    flat, lab = flat[order], lab[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    ends = np.r_[starts[1:], lab.size]
    thf = th.ravel()
    last = np.array(th.shape) - 1
    reach = np.ceil((max_diameter + 2.0 * float(spacing_zyx.max())) / spacing_zyx).astype(int)
    out: list[_Candidate] = []
    for s0, e0 in zip(starts, ends):
        idx = flat[s0:e0]
        vals = thf[idx]
        k = int(np.argmax(vals))
        peak = float(vals[k])
        pz, py, px = (int(v) for v in np.unravel_index(int(idx[k]), th.shape))
        every = np.array(np.unravel_index(idx, th.shape))
        # Cut by the image's edge: not a whole object, so neither measurable nor a BB.
        at_edge = bool(np.any(every.min(axis=1) == 0) or np.any(every.max(axis=1) == last))
        extent = _half_max_extent(th, (pz, py, px), peak, reach, spacing_zyx)
        out.append(_Candidate((pz, py, px), peak, extent,
                              extent <= max_diameter and not at_edge, at_edge))
    return out


def _half_max_extent(th: np.ndarray, peak: tuple[int, int, int], value: float,
                     reach: np.ndarray, spacing_zyx: np.ndarray) -> float:
    """Largest extent (mm) of the region connected to `peak` where the top-hat is at least
    half its peak value: the object's own size, whatever the detection threshold (a
    fragment of a long streak that barely clears the threshold grows back into the
    streak). Infinite when it reaches the edge of the +-reach box around the peak."""
    lo = np.maximum(np.array(peak) - reach, 0)
    hi = np.minimum(np.array(peak) + reach + 1, np.array(th.shape))
    box = np.ascontiguousarray(th[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    seed = [int(v) for v in (np.array(peak) - lo)[::-1]]  # x, y, z for ITK
    region = sitk.GetArrayFromImage(sitk.ConnectedThreshold(
        sitk.GetImageFromArray(box), seedList=[seed], lower=0.5 * value, upper=float("inf"),
        replaceValue=1))
    zyx = np.array(np.nonzero(region))
    touches = np.any(zyx.min(axis=1) == 0) or np.any(zyx.max(axis=1) == np.array(box.shape) - 1)
    if touches:
        return math.inf
    return float(np.max((zyx.max(axis=1) - zyx.min(axis=1) + 1) * spacing_zyx))


def find_bb(
    image: sitk.Image,
    expected_mm: Sequence[float] | None = None,
    search_radius_mm: float = 40.0,
    *,
    min_contrast_hu: float = DEFAULT_MIN_CONTRAST_HU,
    max_diameter_mm: float = DEFAULT_MAX_DIAMETER_MM,
) -> BbFound:
    """The one BB in `image` (within `search_radius_mm` of `expected_mm` when given).

    ValueError (one line) when there is none, or more than one, naming what was found.
    """
    expected, radius, min_contrast, max_diameter = check_inputs(
        image, expected_mm, search_radius_mm, min_contrast_hu, max_diameter_mm)
    spacing_xyz = np.array(image.GetSpacing(), dtype=float)
    spacing_zyx = spacing_xyz[::-1]
    # The opening's box must not fit inside any BB: wider than max_diameter on every axis.
    box_radius = [math.ceil(max_diameter / (2.0 * sp)) for sp in spacing_zyx]
    crop = image
    if expected is not None:
        margin = float(np.max(np.array(box_radius) * spacing_zyx)) + 2.0 * float(spacing_xyz.max())
        crop = crop_to_search(image, expected, radius, margin, "BB")
    a = voxels_of(crop, "BB")
    s = smooth(a)
    th = _top_hat(s, box_radius)
    noise_s = 0.23 * _noise_sd(a, s)  # sd of the smoothed noise
    threshold = max(min_contrast, NOISE_FACTOR * noise_s)

    def physical(index_zyx: Sequence[SupportsFloat] | np.ndarray) -> tuple[float, float, float]:
        return index_to_physical(crop, index_zyx)

    found = _candidates(th, threshold, spacing_zyx, max_diameter)
    if expected is not None:
        found = [c for c in found
                 if np.linalg.norm(np.array(physical(c.peak_index)) - expected) <= radius]
    bbs = [c for c in found if c.compact]
    where = "" if expected is None else f" within {radius:g} mm of {fmt_mm(expected)} mm"
    if not bbs:
        large = sum(1 for c in found if not c.at_edge)
        edge = len(found) - large
        notes = ""
        if large:
            notes += (f"; {large} larger bright object{'s' if large != 1 else ''} "
                      f"(over {max_diameter:g} mm across) ignored")
        if edge:
            notes += (f"; {edge} bright object{'s' if edge != 1 else ''} cut by the image's "
                      f"edge ignored")
        inside = th
        if expected is not None:
            # the brightest spot inside the search sphere, not in the crop's corners
            d2 = squared_distance_mm2(th.shape, physical_to_index(crop, expected), spacing_zyx)
            inside = np.where(d2 <= radius * radius, th, -np.inf)
        peak_at = np.unravel_index(int(np.argmax(inside)), th.shape)
        raise ValueError(
            f"no BB found{where}: brightest compact spot stands {float(th[peak_at]):.0f} HU "
            f"above its surroundings at {fmt_mm(physical(peak_at))} mm (a BB needs "
            f"{threshold:.0f} HU){notes}")
    refined = [_refine(a, c, spacing_zyx, max_diameter) for c in bbs]
    if len(bbs) > 1:
        listed = "; ".join(
            f"{fmt_mm(physical(centre))} mm, {c.contrast:.0f} HU"
            for (centre, _, _), c in sorted(zip(refined, bbs), key=lambda x: -x[1].contrast))
        raise ValueError(f"found {len(bbs)} BB-like objects{where}, expected one: {listed}")
    (centre, est, method), = refined
    if est.voxels == 0:
        raise ValueError(
            f"no BB found{where}: the spot at {fmt_mm(physical(bbs[0].peak_index))} mm has no "
            f"voxels above its local background")
    return BbFound(physical(centre), est.peak_hu, est.voxels, est.background, bbs[0].contrast,
                   method)


def _refine(a: np.ndarray, bb: _Candidate, spacing_zyx: np.ndarray, max_diameter: float
            ) -> tuple[np.ndarray, BbEstimate, str]:
    """Centroid, then the sphere fit from it (the centroid alone if the fit fails)."""
    est = centroid(a, bb.peak_index, spacing_zyx, bb.core_extent_mm)
    if est.voxels == 0:
        return est.centre, est, "centroid"
    fitted = fit_sphere(a, est, spacing_zyx, max_diameter)
    if fitted is None:
        return est.centre, est, "centroid"
    return fitted, est, "sphere fit"

