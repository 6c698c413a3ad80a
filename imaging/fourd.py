"""4D (respiration-sorted) CBCT: target trajectory, amplitude and mean position.

Each phase volume is registered to the planning CT in a small region of
interest around the target with a translation-only match on top of an
optional initial (bony, 6-DoF) registration: the target moves with
breathing mostly as a translation, and a small ROI cannot determine
rotations reliably. Per phase this gives the displacement delta_k of the
target in the daily frame; the target sits at T0(p) + delta_k, with p the
target (isocentre) in planning coordinates and T0 the initial registration.

Reported: the trajectory (per-phase positions), the amplitude per daily axis
and along the principal direction of motion, and the time-weighted mean
position (phases weighted by the fraction of the breathing cycle they
cover; equal for phase binning). The correction handed to the planner
(`correction_matrix`) is T0 followed by the mean displacement, i.e. it
treats the target at its mean position, unless a chosen phase is asked for.

Why this registration: a 3D FFT cross-correlation finds the integer-voxel
shift over the whole search range (no capture-range problem for 15 mm
breathing), then SimpleITK refines it sub-voxel with a correlation metric
(CBCT HU differ from CT HU by a near-linear map, which correlation ignores).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

META_PHASE = "IGRT_PHASE"
META_WEIGHT = "IGRT_PHASE_WEIGHT"


@dataclass(frozen=True)
class FourDSettings:
    # Cube about the target used for matching: small enough to hold the target and
    # what moves with it, not the static chest wall or a diaphragm edge that only
    # partly enters (on the breathing phantom 25 mm already biased inhale by 0.7 mm).
    roi_half_mm: float = 20.0
    search_mm: float = 25.0  # largest displacement searched for
    voxel_mm: float = 1.5  # matching grid
    max_iterations: int = 100
    min_correlation: float = 0.3


@dataclass(frozen=True)
class PhaseResult:
    phase: int
    weight: float
    displacement_mm: tuple[float, float, float]  # daily frame, relative to T0(p)
    position_mm: tuple[float, float, float]  # target in the daily frame
    correlation: float


@dataclass(frozen=True)
class FourDResult:
    initial: np.ndarray  # T0, ITK planning -> daily
    target_mm: tuple[float, float, float]  # p, planning frame
    phases: tuple[PhaseResult, ...]
    mean_position_mm: tuple[float, float, float]
    mean_displacement_mm: tuple[float, float, float]
    amplitude_mm: tuple[float, float, float]  # max - min per daily axis
    principal_amplitude_mm: float
    principal_direction: tuple[float, float, float]
    seconds: float
    converged: bool
    reason: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target_mm": list(self.target_mm),
            "phases": [
                {"phase": p.phase, "weight": p.weight, "position_mm": list(p.position_mm),
                 "displacement_mm": list(p.displacement_mm), "correlation": p.correlation}
                for p in self.phases
            ],
            "mean_position_mm": list(self.mean_position_mm),
            "mean_displacement_mm": list(self.mean_displacement_mm),
            "amplitude_mm": list(self.amplitude_mm),
            "principal_amplitude_mm": self.principal_amplitude_mm,
            "principal_direction": list(self.principal_direction),
            "seconds": self.seconds,
            "converged": self.converged,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


def correction_matrix(result: FourDResult, use: str | int = "mean") -> np.ndarray:
    """4x4 ITK (planning -> daily) registration to hand to the planner: the target at
    its time-weighted mean position (`use="mean"`) or at the given phase index."""
    if use == "mean":
        d = np.asarray(result.mean_displacement_mm)
    else:
        try:
            k = int(use)
        except (TypeError, ValueError):
            raise ValueError(f"use must be 'mean' or a phase index, got {use!r}") from None
        match = [p for p in result.phases if p.phase == k]
        if not match:
            known = ", ".join(str(p.phase) for p in result.phases)
            raise ValueError(f"no phase {k} in this 4D result (phases: {known})")
        d = np.asarray(match[0].displacement_mm)
    shift = np.eye(4)
    shift[:3, 3] = d
    return shift @ result.initial


def phase_weight(img: sitk.Image, default: float) -> float:
    if img.HasMetaDataKey(META_WEIGHT):
        text = img.GetMetaData(META_WEIGHT)
        try:
            w = float(text)
        except ValueError:
            raise ValueError(f"{META_WEIGHT} is not a number ({text!r})") from None
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"{META_WEIGHT} must be a finite fraction >= 0, got {w}")
        return w
    return default


def phase_index(img: sitk.Image, default: int) -> int:
    if img.HasMetaDataKey(META_PHASE):
        try:
            return int(img.GetMetaData(META_PHASE))
        except ValueError:
            raise ValueError(f"{META_PHASE} is not an integer") from None
    return default


def _crop(img: sitk.Image, centre: np.ndarray, half: float) -> sitk.Image:
    """Sub-image covering the physical box centre +- half (whole image if it is inside)."""
    size = np.array(img.GetSize())
    corners = np.array([
        img.TransformPhysicalPointToContinuousIndex(
            [float(centre[i] + (half if b else -half)) for i, b in enumerate(bits)])
        for bits in np.ndindex(2, 2, 2)
    ])
    lo = np.clip(np.floor(corners.min(axis=0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, 0, size - 1)
    if np.any(hi <= lo):
        raise ValueError("the target region lies outside the image")
    return sitk.RegionOfInterest(img, [int(v) for v in hi - lo + 1], [int(v) for v in lo])


def _grid_image(img: sitk.Image, centre: np.ndarray, half: float, voxel: float) -> sitk.Image:
    n = math.ceil(2 * half / voxel) + 1
    origin = [float(c - (n - 1) * voxel / 2.0) for c in centre]
    src = sitk.Cast(_crop(img, centre, half + 2 * voxel), sitk.sitkFloat32)
    if voxel / 2.0 > 0.6 * min(img.GetSpacing()):
        src = sitk.SmoothingRecursiveGaussian(src, voxel / 2.0)
    return sitk.Resample(src, [n] * 3, sitk.Transform(), sitk.sitkLinear, origin, [voxel] * 3,
                         [1, 0, 0, 0, 1, 0, 0, 0, 1], float("nan"), sitk.sitkFloat32)


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is much faster on such lengths)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _fft_shift(template: np.ndarray, search: np.ndarray) -> np.ndarray:
    """Integer (z, y, x) offset of `template` inside `search` maximising the
    normalised correlation (FFT numerator, local energy denominator)."""
    t = template - template.mean()
    t /= np.linalg.norm(t) + 1e-12
    shape = [_fast_len(s + u) for s, u in zip(search.shape, template.shape)]
    ax = (0, 1, 2)
    fs = np.fft.rfftn(search, shape, axes=ax)
    num = np.fft.irfftn(fs * np.conj(np.fft.rfftn(t, shape, axes=ax)), shape, axes=ax)
    fo = np.conj(np.fft.rfftn(np.ones_like(template), shape, axes=ax))
    s1 = np.fft.irfftn(fs * fo, shape, axes=ax)
    s2 = np.fft.irfftn(np.fft.rfftn(search * search, shape, axes=ax) * fo, shape, axes=ax)
    n = template.size
    var = np.maximum(s2 - s1 * s1 / n, 1e-9)
    valid = tuple(slice(0, s - u + 1) for s, u in zip(search.shape, template.shape))
    score = num[valid] / np.sqrt(var[valid])
    return np.array(np.unravel_index(int(np.argmax(score)), score.shape))


def _register_phase(
    fixed: sitk.Image, moving: sitk.Image, centre_daily: np.ndarray, s: FourDSettings,
) -> tuple[np.ndarray, float]:
    """Translation (daily frame) that carries the ROI content of `fixed` (the planning
    CT already mapped into the daily frame by T0) onto `moving`, and its correlation."""
    m_grid = _grid_image(moving, centre_daily, s.roi_half_mm + s.search_mm, s.voxel_mm)
    f_arr = sitk.GetArrayFromImage(fixed)
    m_arr = sitk.GetArrayFromImage(m_grid)
    if np.all(np.isnan(m_arr)):
        raise ValueError("the target region lies outside the phase volume")
    m_arr = np.nan_to_num(m_arr, nan=float(np.nanmin(m_arr)))
    off = _fft_shift(f_arr, m_arr)  # (z, y, x) corner of the template in the search grid
    margin = (np.array(m_arr.shape) - np.array(f_arr.shape)) / 2.0
    coarse = (off - margin)[::-1] * s.voxel_mm  # x, y, z in mm
    m_img = sitk.GetImageFromArray(m_arr)
    m_img.CopyInformation(m_grid)
    tx = sitk.TranslationTransform(3, [float(v) for v in coarse])
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=s.max_iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, m_img)
    shift = np.array(tx.GetOffset(), dtype=float)
    corr = math.sqrt(max(0.0, -float(reg.GetMetricValue())))
    return shift, corr


def register_4d(
    plan_ct: sitk.Image,
    phases: Sequence[sitk.Image],
    target_mm: tuple[float, float, float],
    *,
    initial: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
    settings: FourDSettings | None = None,
) -> FourDResult:
    """Register every phase volume (daily frame) to the planning CT about the target.

    `weights` default to the phases' IGRT_PHASE_WEIGHT metadata, else equal; they are
    normalised to sum 1. Raises ValueError for unusable input.
    """
    s = settings or FourDSettings()
    t_start = time.perf_counter()
    if len(phases) < 2:
        raise ValueError(f"a 4D CBCT needs at least 2 phase volumes, got {len(phases)}")
    for i, ph in enumerate(phases):
        if ph.GetDimension() != 3 or ph.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"phase volume {i} must be a scalar 3D image")
    p = np.asarray(target_mm, dtype=float)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"target must be 3 finite numbers in mm, got {target_mm!r}")
    t0 = np.eye(4) if initial is None else np.asarray(initial, dtype=float)
    if t0.shape != (4, 4):
        raise ValueError("initial registration must be a 4x4 matrix")
    if weights is None:
        w = np.array([phase_weight(ph, 1.0 / len(phases)) for ph in phases])
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(phases),) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"need one finite weight >= 0 per phase ({len(phases)})")
    if w.sum() <= 0:
        raise ValueError("phase weights sum to zero")
    w = w / w.sum()
    centre_daily = (t0 @ np.append(p, 1.0))[:3]
    # The planning ROI, seen in the daily frame through T0 (resampled once).
    n = math.ceil(2 * s.roi_half_mm / s.voxel_mm) + 1
    origin = [float(c - (n - 1) * s.voxel_mm / 2.0) for c in centre_daily]
    inv = np.linalg.inv(t0)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix([float(v) for v in inv[:3, :3].ravel()])
    aff.SetTranslation([float(v) for v in inv[:3, 3]])
    # crop (in planning coordinates) before smoothing: the ROI is a few cm
    src = sitk.Cast(_crop(plan_ct, p, math.sqrt(3) * s.roi_half_mm + 2 * s.voxel_mm),
                    sitk.sitkFloat32)
    if s.voxel_mm / 2.0 > 0.6 * min(plan_ct.GetSpacing()):
        src = sitk.SmoothingRecursiveGaussian(src, s.voxel_mm / 2.0)
    fixed = sitk.Resample(src, [n] * 3, aff, sitk.sitkLinear, origin, [s.voxel_mm] * 3,
                          [1, 0, 0, 0, 1, 0, 0, 0, 1], -1000.0, sitk.sitkFloat32)
    results: list[PhaseResult] = []
    for i, ph in enumerate(phases):
        shift, corr = _register_phase(fixed, ph, centre_daily, s)
        pos = centre_daily + shift
        results.append(PhaseResult(
            phase=phase_index(ph, i), weight=float(w[i]),
            displacement_mm=(float(shift[0]), float(shift[1]), float(shift[2])),
            position_mm=(float(pos[0]), float(pos[1]), float(pos[2])), correlation=corr,
        ))
    disp = np.array([r.displacement_mm for r in results])
    mean_d = (w[:, None] * disp).sum(axis=0)
    c = (disp - mean_d) * np.sqrt(w)[:, None]
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    direction = vt[0] if np.abs(vt[0]).max() > 0 else np.array([0.0, 0.0, 1.0])
    direction = direction * (1.0 if direction[np.argmax(np.abs(direction))] > 0 else -1.0)
    proj = disp @ direction
    worst = min(r.correlation for r in results)
    ok = worst >= s.min_correlation
    reason = "" if ok else (
        f"phase correlation {worst:.2f} is below the minimum {s.min_correlation:.2f}: "
        "the target is not visible well enough in every phase")
    mean_pos = centre_daily + mean_d
    return FourDResult(
        initial=t0,
        target_mm=(float(p[0]), float(p[1]), float(p[2])),
        phases=tuple(results),
        mean_position_mm=(float(mean_pos[0]), float(mean_pos[1]), float(mean_pos[2])),
        mean_displacement_mm=(float(mean_d[0]), float(mean_d[1]), float(mean_d[2])),
        amplitude_mm=tuple(float(v) for v in disp.max(axis=0) - disp.min(axis=0)),  # type: ignore[arg-type]
        principal_amplitude_mm=float(proj.max() - proj.min()),
        principal_direction=(float(direction[0]), float(direction[1]), float(direction[2])),
        seconds=time.perf_counter() - t_start,
        converged=ok,
        reason=reason,
    )
