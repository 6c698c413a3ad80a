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
3. Position, on the unsmoothed image: a soft-thresholded intensity-weighted
   centroid (weights max(0, HU - bg - tau); bg the median of a shell around
   the BB, i.e. its local background whatever the cupping; tau the larger of
   3 sd of the shell's noise and a tenth of the BB's contrast), then a robust
   (Huber) Levenberg-Marquardt fit of a sphere with a Gaussian-blurred edge
   (blur per image axis: voxels of 1 x 1 x 1.6 mm blur unequally) from it.
   The centroid alone is biased by the sampling (a 4 mm BB spans ~3 slices of
   1.6 mm: up to 0.25 mm off along them); the fit is not (<0.05 mm on the
   tests' images), and the Huber weights make a streak crossing the BB count
   little. Should the fit fail (it moved more than a voxel from the centroid,
   or gave non-finite numbers), the centroid is returned and `method` says so.

Pure computation on an image already read: no file or device access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["AirHoleFound", "BbFound", "find_air_hole", "find_bb"]

# A BB must stand this far above what surrounds it (top-hat contrast, HU).
DEFAULT_MIN_CONTRAST_HU = 500.0
# Largest object accepted as a BB (its half-maximum core), mm.
DEFAULT_MAX_DIAMETER_MM = 10.0
# On the smoothed image, a candidate must also clear this many sd of its noise.
NOISE_FACTOR = 12.0
# Soft threshold of the centroid, as a fraction of the BB's contrast.
CENTROID_FRACTION = 0.1
CENTROID_ITERATIONS = 3
# At most this many Levenberg-Marquardt iterations of the sphere fit.
FIT_ITERATIONS = 40


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


@dataclass(frozen=True)
class _Estimate:
    centre: np.ndarray  # continuous array index (z, y, x)
    peak_hu: float
    voxels: int
    background: float
    noise: float
    window_mm: float
    contrast: float = 0.0


def _fmt(p: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{round(float(v), 1) + 0.0:.1f}" for v in p) + ")"


def _finite_number(value: object, what: str, unit: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in {unit}, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} is not a finite number: {v!r} {unit}")
    return v


def _check_inputs(
    image: sitk.Image, expected_mm: Sequence[float] | None, search_radius_mm: float,
    min_contrast_hu: float, max_diameter_mm: float,
) -> tuple[np.ndarray | None, float, float, float]:
    if not isinstance(image, sitk.Image):
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"find_bb needs a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(f"BB image must be 3D, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("BB image must be scalar (one component per voxel)")
    if min(image.GetSize()) < 3:
        raise ValueError(f"BB image is too small ({image.GetSize()} voxels)")
    radius = _finite_number(search_radius_mm, "search_radius_mm", "mm")
    if not radius > 0:
        raise ValueError(f"search_radius_mm {radius:g} mm must be greater than 0 mm")
    contrast = _finite_number(min_contrast_hu, "min_contrast_hu", "HU")
    if not contrast > 0:
        raise ValueError(f"min_contrast_hu {contrast:g} HU must be greater than 0 HU")
    diameter = _finite_number(max_diameter_mm, "max_diameter_mm", "mm")
    if not diameter > 0:
        raise ValueError(f"max_diameter_mm {diameter:g} mm must be greater than 0 mm")
    expected: np.ndarray | None = None
    if expected_mm is not None:
        if len(expected_mm) != 3:
            raise ValueError(f"expected_mm must be 3 numbers (x, y, z mm), got {len(expected_mm)}")
        expected = np.array([_finite_number(v, f"expected_mm {k}", "mm")
                             for k, v in zip("xyz", expected_mm)])
    return expected, radius, contrast, diameter


def _crop_to_search(image: sitk.Image, expected: np.ndarray, radius: float,
                    margin_mm: float, what: str = "BB") -> sitk.Image:
    """The sub-image covering the search sphere plus a margin (any direction cosines)."""
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
            f"{_fmt(expected)} mm lies outside the image")
    return sitk.RegionOfInterest(image, [int(v) for v in hi_c - lo_c + 1], [int(v) for v in lo_c])


def _smooth(a: np.ndarray) -> np.ndarray:
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


def _local_box(a: np.ndarray, peak: Sequence[int], reach: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    lo = np.maximum(np.array(peak) - reach, 0)
    hi = np.minimum(np.array(peak) + reach + 1, np.array(a.shape))
    box = a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
    grid = np.stack(np.meshgrid(*(np.arange(lo[i], hi[i]) for i in range(3)), indexing="ij"))
    return box, grid.astype(np.float64)


def _centroid(a: np.ndarray, peak: tuple[int, int, int], spacing_zyx: np.ndarray,
              core_extent_mm: float) -> _Estimate:
    """Soft-thresholded intensity-weighted centroid about the peak (the fit's start)."""
    r_w = core_extent_mm / 2.0 + 2.0 * float(spacing_zyx.max())
    r_in = r_w + 1.5
    r_out = r_in + 4.0
    box, grid = _local_box(a, peak, np.ceil(r_out / spacing_zyx).astype(int) + 1)
    sp = spacing_zyx[:, None, None, None]
    centre = np.array(peak, dtype=float)
    est = _Estimate(centre, float(box.max()), 0, 0.0, 0.0, r_w)
    for _ in range(CENTROID_ITERATIONS):
        d = np.sqrt((((grid - centre[:, None, None, None]) * sp) ** 2).sum(axis=0))
        shell = box[(d >= r_in) & (d <= r_out)]
        bg = float(np.median(shell))
        noise = 1.4826 * float(np.median(np.abs(shell - bg)))
        inner = d <= r_w
        v = box[inner] - bg
        contrast = float(v.max())
        tau = max(3.0 * noise, CENTROID_FRACTION * contrast)
        w = np.clip(v - tau, 0.0, None)
        total = float(w.sum())
        if not total > 0:
            break
        centre = (grid[:, inner] * w).sum(axis=1) / total
        est = _Estimate(centre, float(box[inner].max()), int(np.count_nonzero(w)), bg,
                        max(noise, 1.0), r_w, contrast)
    return est


def _sphere_model(p: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model HU at points p (3, N; mm about the start, array axes z, y, x) and its
    Jacobian (N, 9) for theta = (cz, cy, cx, radius, sz, sy, sx, contrast, background):

        bg + C * erfc((|p - c| - r) / (sqrt(2) S(n))) / 2,   S(n)^2 = sum_i n_i^2 s_i^2,

    a sphere whose edge is blurred by a Gaussian of sd s_i along array axis i (voxels
    average over their own, anisotropic, extent), n = (p - c) / |p - c|."""
    c, r, s, contrast = theta[:3], theta[3], theta[4:7], theta[7]
    diff = p - c[:, None]
    d = np.sqrt((diff * diff).sum(axis=0))
    safe_d = np.where(d > 1e-9, d, 1e-9)
    n = diff / safe_d
    s2 = s * s
    big_s = np.sqrt((n * n * s2[:, None]).sum(axis=0))
    root2 = math.sqrt(2.0)
    u = (d - r) / (root2 * big_s)
    step = 0.5 * _erfc(u)
    g = -np.exp(-u * u) / math.sqrt(math.pi)  # d step / du
    cg = contrast * g
    # du/dc_j = -n_j / (sqrt2 S) + (d - r) n_j (s_j^2 - S^2) / (sqrt2 S^3 d)
    du_dc = (-n / (root2 * big_s)
             + (d - r) * n * (s2[:, None] - big_s * big_s) / (root2 * big_s ** 3 * safe_d))
    # du/ds_i = -(d - r) / (sqrt2 S^2) * n_i^2 s_i / S
    du_ds = -(d - r) / (root2 * big_s * big_s) * (n * n * s[:, None]) / big_s
    jac = np.empty((p.shape[1], 9))
    jac[:, 0:3] = (cg * du_dc).T
    jac[:, 3] = cg * (-1.0 / (root2 * big_s))
    jac[:, 4:7] = (cg * du_ds).T
    jac[:, 7] = step
    jac[:, 8] = 1.0
    return theta[8] + contrast * step, jac


def _erfc(u: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 on |u| (max error 1.5e-7), reflected for u < 0.
    x = np.abs(u)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    e = poly * np.exp(-x * x)
    return np.where(u >= 0, e, 2.0 - e)


def _fit_sphere(a: np.ndarray, start: _Estimate, spacing_zyx: np.ndarray,
                max_diameter: float) -> np.ndarray | None:
    """Robust (Huber) Levenberg-Marquardt fit of `_sphere_model` about the centroid;
    the centre (continuous array index) or None when the fit is not trustworthy."""
    r_fit = start.window_mm + 1.5
    peak = tuple(round(float(v)) for v in start.centre)
    box, grid = _local_box(a, peak, np.ceil(r_fit / spacing_zyx).astype(int) + 1)
    p = (grid - start.centre[:, None, None, None]) * spacing_zyx[:, None, None, None]
    inside = np.sqrt((p * p).sum(axis=0)) <= r_fit
    pts, y = p[:, inside], box[inside]
    above = np.count_nonzero(y - start.background >= 0.5 * start.contrast)
    r0 = (3.0 * above * float(np.prod(spacing_zyx)) / (4.0 * math.pi)) ** (1.0 / 3.0)
    theta = np.array([0.0, 0.0, 0.0, max(r0, 0.5), *(0.3 * spacing_zyx + 0.2), start.contrast,
                      start.background])
    huber = 1.345 * start.noise
    lam = 1e-3
    model, jac = _sphere_model(pts, theta)
    res = y - model

    def cost(res: np.ndarray) -> float:
        ar = np.abs(res)
        return float(np.where(ar <= huber, 0.5 * ar * ar, huber * (ar - 0.5 * huber)).sum())

    current = cost(res)
    for _ in range(FIT_ITERATIONS):
        ar = np.abs(res)
        w = np.where(ar <= huber, 1.0, huber / np.maximum(ar, 1e-12))
        jw = jac * w[:, None]
        h = jac.T @ jw
        grad = jw.T @ res
        accepted = False
        for _ in range(12):
            try:
                step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), grad)
            except np.linalg.LinAlgError:
                return None
            trial = theta + step
            trial[4:7] = np.clip(trial[4:7], 0.05, 3.0)
            trial[3] = min(max(trial[3], 0.2), max_diameter)
            t_model, t_jac = _sphere_model(pts, trial)
            t_res = y - t_model
            t_cost = cost(t_res)
            if t_cost <= current:
                theta, model, jac, res, current = trial, t_model, t_jac, t_res, t_cost
                lam = max(lam / 10.0, 1e-9)
                accepted = True
                break
            lam *= 10.0
        if not accepted or float(np.abs(step[:3]).max()) < 1e-5:
            break
    if not np.all(np.isfinite(theta)) or theta[7] <= 0:
        return None
    shift = theta[:3]
    # The fit refines the centroid; a fit that wandered off by a voxel has failed.
    if float(np.max(np.abs(shift) / spacing_zyx)) > 1.0:
        return None
    centre: np.ndarray = start.centre + shift / spacing_zyx
    return centre


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
    expected, radius, min_contrast, max_diameter = _check_inputs(
        image, expected_mm, search_radius_mm, min_contrast_hu, max_diameter_mm)
    spacing_xyz = np.array(image.GetSpacing(), dtype=float)
    spacing_zyx = spacing_xyz[::-1]
    # The opening's box must not fit inside any BB: wider than max_diameter on every axis.
    box_radius = [math.ceil(max_diameter / (2.0 * sp)) for sp in spacing_zyx]
    crop = image
    if expected is not None:
        margin = float(np.max(np.array(box_radius) * spacing_zyx)) + 2.0 * float(spacing_xyz.max())
        crop = _crop_to_search(image, expected, radius, margin)
    a = sitk.GetArrayFromImage(crop).astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError("BB image holds voxels that are not finite numbers")
    s = _smooth(a)
    th = _top_hat(s, box_radius)
    noise_s = 0.23 * _noise_sd(a, s)  # sd of the smoothed noise
    threshold = max(min_contrast, NOISE_FACTOR * noise_s)

    def physical(index_zyx: Sequence[Any] | np.ndarray) -> tuple[float, float, float]:
        p = crop.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_zyx[::-1]])
        return (float(p[0]), float(p[1]), float(p[2]))

    found = _candidates(th, threshold, spacing_zyx, max_diameter)
    if expected is not None:
        found = [c for c in found
                 if np.linalg.norm(np.array(physical(c.peak_index)) - expected) <= radius]
    bbs = [c for c in found if c.compact]
    where = "" if expected is None else f" within {radius:g} mm of {_fmt(expected)} mm"
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
            ce = np.array(crop.TransformPhysicalPointToContinuousIndex(
                [float(v) for v in expected]))[::-1]
            z, y, x = np.ogrid[:th.shape[0], :th.shape[1], :th.shape[2]]
            d2 = (((z - ce[0]) * spacing_zyx[0]) ** 2 + ((y - ce[1]) * spacing_zyx[1]) ** 2
                  + ((x - ce[2]) * spacing_zyx[2]) ** 2)
            inside = np.where(d2 <= radius * radius, th, -np.inf)
        peak_at = np.unravel_index(int(np.argmax(inside)), th.shape)
        raise ValueError(
            f"no BB found{where}: brightest compact spot stands {float(th[peak_at]):.0f} HU "
            f"above its surroundings at {_fmt(physical(peak_at))} mm (a BB needs "
            f"{threshold:.0f} HU){notes}")
    refined = [_refine(a, c, spacing_zyx, max_diameter) for c in bbs]
    if len(bbs) > 1:
        listed = "; ".join(
            f"{_fmt(physical(centre))} mm, {c.contrast:.0f} HU"
            for (centre, _, _), c in sorted(zip(refined, bbs), key=lambda x: -x[1].contrast))
        raise ValueError(f"found {len(bbs)} BB-like objects{where}, expected one: {listed}")
    (centre, est, method), = refined
    if est.voxels == 0:
        raise ValueError(
            f"no BB found{where}: the spot at {_fmt(physical(bbs[0].peak_index))} mm has no "
            f"voxels above its local background")
    return BbFound(physical(centre), est.peak_hu, est.voxels, est.background, bbs[0].contrast,
                   method)


def _refine(a: np.ndarray, bb: _Candidate, spacing_zyx: np.ndarray, max_diameter: float
            ) -> tuple[np.ndarray, _Estimate, str]:
    """Centroid, then the sphere fit from it (the centroid alone if the fit fails)."""
    est = _centroid(a, bb.peak_index, spacing_zyx, bb.core_extent_mm)
    if est.voxels == 0:
        return est.centre, est, "centroid"
    fitted = _fit_sphere(a, est, spacing_zyx, max_diameter)
    if fitted is None:
        return est.centre, est, "centroid"
    return fitted, est, "sphere fit"


# --------------------------------------------------------------------------- air holes

# An air hole must read at least this far below the material around it (HU).
DEFAULT_HOLE_MIN_CONTRAST_HU = 500.0
# A dark object is hole-like when its volume below the mid threshold is within these
# fractions of the expected sphere's.
HOLE_VOLUME_RANGE = (0.3, 3.0)


@dataclass(frozen=True)
class AirHoleFound:
    """A dark sphere (an air hole of the QA phantom) found by `find_air_hole`."""

    position_mm: tuple[float, float, float]  # image physical frame (DICOM LPS)
    voxels: int  # voxels that weighed in the centroid
    background_hu: float  # median of the shell around it (the phantom's material)
    air_hu: float  # median of its core (below the mid threshold)
    volume_mm3: float  # volume below the mid threshold

    def to_json_dict(self) -> dict[str, object]:
        return {
            "position_mm": [float(v) for v in self.position_mm],
            "voxels": int(self.voxels),
            "background_hu": float(self.background_hu),
            "air_hu": float(self.air_hu),
            "volume_mm3": float(self.volume_mm3),
        }


def find_air_hole(
    image: sitk.Image,
    expected_mm: Sequence[float],
    radius_mm: float,
    search_radius_mm: float = 10.0,
    *,
    min_contrast_hu: float = DEFAULT_HOLE_MIN_CONTRAST_HU,
) -> AirHoleFound:
    """The one air hole (a dark sphere of about `radius_mm`) within `search_radius_mm`
    of `expected_mm` (image physical frame, mm), to a fraction of a voxel.

    Detection: on a lightly smoothed crop, the connected regions darker than the
    threshold halfway between the material (the crop's median) and the darkest voxel
    in the search sphere; a region is hole-like when it is whole (not cut by the crop's
    edge: the air outside the phantom is) and its volume is within HOLE_VOLUME_RANGE of
    the sphere's. Position, on the unsmoothed image: a soft-thresholded weighted
    centroid of the darkness, weights clip(bg - tau - HU, 0, bg - tau - air) within
    radius + 2.5 mm of the current centre (bg the median of a shell around the hole,
    tau 3 sd of its noise), iterated: the weights are a voxel's air fraction, so the
    centroid is the sphere's centre whatever the slice thickness (no sampling bias of a
    bright-spot centroid: the hole spans several slices).

    ValueError (one line) when there is none, or more than one."""
    if expected_mm is None:
        raise ValueError("find_air_hole needs expected_mm (x, y, z mm)")
    expected, radius, min_contrast, _ = _check_inputs(
        image, expected_mm, search_radius_mm, min_contrast_hu, 1.0)
    if expected is None:  # pragma: no cover - given above
        raise ValueError("find_air_hole needs expected_mm (x, y, z mm)")
    r_hole = _finite_number(radius_mm, "radius_mm", "mm")
    if not r_hole > 0:
        raise ValueError(f"radius_mm {r_hole:g} mm must be greater than 0 mm")
    spacing_zyx = np.array(image.GetSpacing(), dtype=float)[::-1]
    r_w = r_hole + 2.5  # centroid window: the hole, its blurred edge and a voxel
    margin = r_w + 4.0 + 2.0 * float(spacing_zyx.max())
    crop = _crop_to_search(image, expected, radius, margin, "air hole")
    a = sitk.GetArrayFromImage(crop).astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError("air-hole image holds voxels that are not finite numbers")
    s = _smooth(a)
    where = f" within {radius:g} mm of {_fmt(expected)} mm"

    def physical(index_zyx: Sequence[Any] | np.ndarray) -> tuple[float, float, float]:
        p = crop.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_zyx[::-1]])
        return (float(p[0]), float(p[1]), float(p[2]))

    ce = np.array(crop.TransformPhysicalPointToContinuousIndex(
        [float(v) for v in expected]))[::-1]
    z, y, x = np.ogrid[:a.shape[0], :a.shape[1], :a.shape[2]]
    d2 = (((z - ce[0]) * spacing_zyx[0]) ** 2 + ((y - ce[1]) * spacing_zyx[1]) ** 2
          + ((x - ce[2]) * spacing_zyx[2]) ** 2)
    in_search = d2 <= radius * radius
    material = float(np.median(s))
    darkest_at = np.unravel_index(int(np.argmin(np.where(in_search, s, np.inf))), s.shape)
    depth = material - float(s[darkest_at])
    if not depth >= min_contrast:
        raise ValueError(
            f"no air hole found{where}: the darkest spot is {depth:.0f} HU below the material "
            f"({material:.0f} HU) at {_fmt(physical(darkest_at))} mm (a hole needs "
            f"{min_contrast:.0f} HU)")
    mid = material - 0.5 * depth
    dark = s < mid
    labels = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(dark.astype(np.uint8)), True))
    voxel_mm3 = float(np.prod(spacing_zyx))
    sphere_mm3 = 4.0 / 3.0 * math.pi * r_hole ** 3
    last = np.array(a.shape) - 1
    holes: list[tuple[np.ndarray, float]] = []  # (start centre index, volume)
    ignored = 0
    for lab in range(1, int(labels.max()) + 1):
        zyx = np.array(np.nonzero(labels == lab))
        if zyx.shape[1] == 0 or not bool(in_search[tuple(zyx)].any()):
            continue
        volume = zyx.shape[1] * voxel_mm3
        whole = not (np.any(zyx.min(axis=1) == 0) or np.any(zyx.max(axis=1) == last))
        lo, hi = HOLE_VOLUME_RANGE
        if whole and lo * sphere_mm3 <= volume <= hi * sphere_mm3:
            holes.append((zyx.mean(axis=1), volume))
        else:
            ignored += 1
    notes = "" if not ignored else (
        f"; {ignored} dark region{'s' if ignored != 1 else ''} of another size or cut by the "
        f"search region's edge ignored")
    if not holes:
        raise ValueError(f"no air hole of radius {r_hole:g} mm found{where}{notes}")
    if len(holes) > 1:
        listed = "; ".join(f"{_fmt(physical(c))} mm, {v:.0f} mm3" for c, v in holes)
        raise ValueError(f"found {len(holes)} air-hole-like objects{where}, expected one: "
                         f"{listed}")
    (centre, volume), = holes
    box, grid = _local_box(a, [round(float(v)) for v in centre],
                           np.ceil((r_w + 4.0) / spacing_zyx).astype(int) + 1)
    sp = spacing_zyx[:, None, None, None]
    bg = air = material
    voxels = 0
    for _ in range(CENTROID_ITERATIONS + 1):
        d = np.sqrt((((grid - centre[:, None, None, None]) * sp) ** 2).sum(axis=0))
        shell = box[(d >= r_w + 0.5) & (d <= r_w + 4.0)]
        bg = float(np.median(shell))
        noise = 1.4826 * float(np.median(np.abs(shell - bg)))
        inner = d <= r_w
        core = box[inner][box[inner] < 0.5 * (bg + float(s[darkest_at]))]
        air = float(np.median(core)) if core.size else float(box[inner].min())
        tau = 3.0 * noise
        w = np.clip(bg - tau - box[inner], 0.0, max(bg - tau - air, 1.0))
        total = float(w.sum())
        if not total > 0:
            raise ValueError(f"no air hole found{where}: the dark spot at "
                             f"{_fmt(physical(centre))} mm has no voxels below its surroundings")
        centre = (grid[:, inner] * w).sum(axis=1) / total
        voxels = int(np.count_nonzero(w))
    return AirHoleFound(physical(centre), voxels, bg, air, volume)
