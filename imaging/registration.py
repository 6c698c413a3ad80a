"""Rigid 6-DoF registration of a daily CBCT (moving) to the planning CT (fixed).

Result convention (docs/geometry.md): `matrix` is the 4x4 ITK fixed->moving
transform T, mapping a planning point to the daily-image point where that
anatomy appears. SimpleITK's ImageRegistrationMethod optimises exactly that
map (it samples the fixed image and looks the points up in the moving one).

How it is made fast and accurate (measurements in docs/registration.md):

* Region of interest: only a cube around the isocentre (default +-60 mm) is
  registered. The couch correction is about the target; far anatomy (arms,
  the truncated CBCT rim) only adds cost and disagreement.
* Capture level: both crops block-averaged and resampled to a 5 mm grid (a few
  ms), SimpleITK correlation with regular-step gradient descent on 10 % of the
  voxels. It takes up the set-up error (tested to 12 mm and 3 deg).
* Refinement level, our own Gauss-Newton (numpy) at native resolution:
  - samples at exact planning-CT voxel centres, every slice. ITK's sampling
    jitters each sample by about a third of a voxel, which interpolates the
    planning CT between its 2-2.5 mm slices: that was the slice-direction error;
  - ~15,000 voxels drawn with probability growing with the CT's gradient and
    weighted back (an unbiased estimate of the full-sampling correlation);
  - model: CT HU = gain * CBCT HU + offset + a quadratic bias (cupping,
    shading) -- least squares with the linear terms free is correlation;
  - the daily image is sampled straight from its buffer with the exact
    gradient of its trilinear interpolant; 3-6 iterations.
* Masks: planning-CT voxels of the couch table-top (dense sheets next to air)
  and air away from the patient are not sampled; samples whose daily-image
  cell touches the padding outside the CBCT's reconstructed field of view are
  dropped.
* Euler3DTransform centred on the isocentre, so rotations do not couple into
  the translation the optimiser sees; optimiser scales from physical shift.

It holds no global state and is safe to call from a worker thread (SimpleITK
releases the GIL inside Execute), which is how the daemon runs it.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import SimpleITK as sitk

from imaging.registration_masks import (
    _field_of_view_mask,
    _on_grid,
    _padding_value,
    _without_thin_dense_sheets,
)
from imaging.registration_refine import (
    _refine_gauss_newton,
    _Trilinear,  # noqa: F401 -- re-exported for the tests
)
from imaging.registration_result import RegistrationFailed, RegistrationResult
from imaging.registration_sampling import (
    _importance_subset,
    _informative_array,
    _informative_mask,
    _voxel_subset,
)
from imaging.registration_settings import (
    Level,
    Metric,
    Optimizer,
    RegistrationSettings,
    Sampling,
)

# The public entry: what callers import from here, wherever it is defined.
__all__ = [
    "Level",
    "Metric",
    "Optimizer",
    "RegistrationFailed",
    "RegistrationResult",
    "RegistrationSettings",
    "Sampling",
    "image_centre",
    "register_rigid",
    "rotation_angles_deg",
]

log = logging.getLogger(__name__)


def rotation_angles_deg(r: np.ndarray) -> tuple[float, float, float]:
    """(rx, ry, rz) in degrees with R = Rz(rz) Ry(ry) Rx(rx), about planning x, y, z."""
    ry = -math.asin(max(-1.0, min(1.0, float(r[2, 0]))))
    rx = math.atan2(float(r[2, 1]), float(r[2, 2]))
    rz = math.atan2(float(r[1, 0]), float(r[0, 0]))
    return (math.degrees(rx), math.degrees(ry), math.degrees(rz))


def image_centre(img: sitk.Image) -> tuple[float, float, float]:
    c = [(s - 1) / 2.0 for s in img.GetSize()]
    return tuple(img.TransformContinuousIndexToPhysicalPoint(c))  # type: ignore[return-value]


def _physical_bounds(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = img.GetSize()
    corners = [
        img.TransformContinuousIndexToPhysicalPoint(
            [(-0.5 if b == 0 else s - 0.5) for b, s in zip(bits, size)]
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    arr = np.array(corners)
    return arr.min(axis=0), arr.max(axis=0)


def _crop(img: sitk.Image, centre: np.ndarray, half: float) -> sitk.Image:
    """Sub-image holding the physical box centre +- half (any direction cosines)."""
    size = np.array(img.GetSize())
    corners = [
        img.TransformPhysicalPointToContinuousIndex(
            [float(centre[i] + (half if b else -half)) for i, b in enumerate(bits)]
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    arr = np.array(corners)
    lo = np.clip(np.floor(arr.min(axis=0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(arr.max(axis=0)).astype(int) + 1, 0, size - 1)
    ext = hi - lo + 1
    if np.any(ext < 4):
        raise ValueError("the registration region around the isocentre lies outside the image")
    return sitk.RegionOfInterest(img, [int(v) for v in ext], [int(v) for v in lo])


def _level_image(img: sitk.Image, centre: np.ndarray, half: float, spacing: float) -> sitk.Image:
    """The level image covering centre +- half: native voxels when spacing is 0, else an
    isotropic axis-aligned grid of `spacing` mm.

    Anti-aliasing is a block average (BinShrink, a few ms) down to about the level
    spacing before linear resampling: a Gaussian on the full-resolution crop costs
    ~100 ms per image on this hardware, more than the whole optimisation.
    """
    if spacing <= 0:
        return sitk.Cast(_crop(img, centre, half), sitk.sitkFloat32)
    factors = [max(1, round(spacing / sp)) for sp in img.GetSpacing()]
    if max(factors) > 1:
        img = sitk.BinShrink(img, factors)
    n = math.ceil(2 * half / spacing) + 1
    origin = [float(c - (n - 1) * spacing / 2.0) for c in centre]
    return sitk.Resample(
        img, [n, n, n], sitk.Transform(), sitk.sitkLinear, origin, [spacing] * 3,
        [1, 0, 0, 0, 1, 0, 0, 0, 1], 0.0, sitk.sitkFloat32,
    )


def _euler_from_matrix(m: np.ndarray, centre: np.ndarray) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(v) for v in centre])
    r = np.asarray(m[:3, :3], dtype=float)
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
        raise ValueError("initial transform is not a rigid rotation")
    tx.SetMatrix([float(v) for v in r.ravel()])
    t = m[:3, :3] @ centre + m[:3, 3] - centre
    tx.SetTranslation([float(v) for v in t])
    return tx


def _matrix_of(tx: sitk.Euler3DTransform) -> np.ndarray:
    r = np.array(tx.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.array(tx.GetCenter(), dtype=float)
    t = np.array(tx.GetTranslation(), dtype=float)
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = c + t - r @ c
    return out


def _check_image(img: sitk.Image, what: str) -> None:
    if img.GetDimension() != 3:
        raise ValueError(f"{what} image must be 3D, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{what} image must be scalar (one component per voxel)")
    if min(img.GetSize()) < 4:
        raise ValueError(f"{what} image is too small ({img.GetSize()} voxels)")


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    iso_mm: tuple[float, float, float] | None = None,
    roi_half_mm: float | None = None,
    initial: np.ndarray | None = None,
    settings: RegistrationSettings | None = None,
) -> RegistrationResult:
    """Register `moving` (daily CBCT) to `fixed` (planning CT) about the isocentre.

    `iso_mm` defaults to the centre of the moving image (a CBCT is reconstructed
    around the machine isocentre, where the planned isocentre is put). `initial`
    is a 4x4 fixed->moving starting guess (identity by default: the daily frame is
    tied to the planning frame at the isocentre). Raises ValueError for unusable
    input; returns converged=False with a reason when the result must not be used.
    """
    s = settings or RegistrationSettings()
    if roi_half_mm is not None:
        from dataclasses import replace

        s = replace(s, roi_half_mm=float(roi_half_mm))
    if not s.levels:
        raise ValueError("registration settings need at least one pyramid level")
    _check_image(fixed, "fixed")
    _check_image(moving, "moving")
    t0 = time.perf_counter()
    centre = np.array(iso_mm if iso_mm is not None else image_centre(moving), dtype=float)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(f"isocentre must be 3 finite numbers in mm, got {iso_mm!r}")
    lo, hi = _physical_bounds(fixed)
    if np.any(centre < lo) or np.any(centre > hi):
        raise ValueError(
            f"isocentre {tuple(round(float(v), 1) for v in centre)} mm is outside the fixed image"
        )
    half = s.roi_half_mm
    pad = 2 * max(lv.spacing_mm for lv in s.levels)
    tx = _euler_from_matrix(np.eye(4) if initial is None else np.asarray(initial, float), centre)
    fixed_roi = _crop(fixed, centre, half + pad)
    padding = _padding_value(moving)
    keep = _without_thin_dense_sheets(fixed_roi, s) if s.exclude_thin_sheets_mm > 0 else None
    level_iters: list[int] = []
    stop = ""
    metric_value = float("nan")
    hit_max = False
    for n, lv in enumerate(s.levels):
        # The moving crop follows the current estimate: wide for the first level (the
        # whole expected set-up error), a few mm for the refinements after it.
        m_centre = np.array(tx.TransformPoint([float(v) for v in centre]))
        m_half = half + (s.moving_margin_mm if n == 0 else s.refine_margin_mm)
        f_lvl = _level_image(fixed_roi, centre, half, lv.spacing_mm)
        m_pad = 2 * lv.spacing_mm  # the block average needs a margin; native voxels do not
        if lv.optimizer == "gauss_newton" and lv.spacing_mm <= 0:
            # Native voxels: sampled straight from the daily image's buffer.
            m_crop = m_lvl = moving
        else:
            m_crop = _crop(moving, m_centre, m_half + m_pad)
            m_lvl = _level_image(m_crop, m_centre, m_half, lv.spacing_mm)
        if lv.optimizer == "gauss_newton":
            mask = _informative_array(f_lvl, lv.informative_fraction)
            if keep is not None:
                mask &= sitk.GetArrayFromImage(_on_grid(keep, f_lvl)).astype(bool)
            weights: np.ndarray | None = None
            if lv.importance_sampling:
                mask, weight_img = _importance_subset(mask, f_lvl, lv.max_samples, s.seed)
                weights = weight_img[mask].astype(np.float64)
            else:
                mask = _voxel_subset(mask, lv.max_samples, s.seed)
            refined = _refine_gauss_newton(f_lvl, mask, m_lvl, tx, lv, lever_mm=half,
                                           padding=padding, weights=weights)
            level_iters.append(refined.iterations)
            stop = refined.stop
            metric_value = -refined.ncc ** 2 if math.isfinite(refined.ncc) else float("nan")
            hit_max = refined.hit_max
            continue
        reg = _method(s, lv)
        reg.SetInitialTransform(tx, inPlace=True)
        f_mask = (_informative_mask(f_lvl, lv.informative_fraction)
                  if lv.informative_fraction < 1.0 else None)
        if keep is not None:
            k = _on_grid(keep, f_lvl)
            f_mask = k if f_mask is None else sitk.And(f_mask, k)
        if f_mask is not None:
            reg.SetMetricFixedMask(f_mask)
        if padding is not None:
            reg.SetMetricMovingMask(_field_of_view_mask(m_crop, m_lvl, padding, lv.spacing_mm))
        try:
            reg.Execute(f_lvl, m_lvl)
        except RuntimeError as exc:
            # ITK raises when too few samples map inside the moving image.
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "ITK error"
            raise RegistrationFailed(f"registration failed at {lv.spacing_mm} mm: {first}") from None
        it = int(reg.GetOptimizerIteration())
        level_iters.append(it)
        stop = reg.GetOptimizerStopConditionDescription()
        metric_value = float(reg.GetMetricValue())
        hit_max = it >= lv.max_iterations
    matrix = _matrix_of(tx)
    seconds = time.perf_counter() - t0
    converged, quality, reason = _judge(s, metric_value, hit_max, stop)
    if not converged:
        log.warning("registration refused: %s", reason)
    t_iso = matrix[:3, :3] @ centre + matrix[:3, 3] - centre
    return RegistrationResult(
        matrix=matrix,
        translation_mm=(float(t_iso[0]), float(t_iso[1]), float(t_iso[2])),
        rotation_deg=rotation_angles_deg(matrix[:3, :3]),
        metric=metric_value,
        seconds=seconds,
        converged=converged,
        iterations=sum(level_iters),
        quality=quality,
        reason=reason,
        metric_name=s.metric,
        stop_condition=stop,
        level_iterations=tuple(level_iters),
    )


def _method(s: RegistrationSettings, lv: Level) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if s.metric == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.mattes_bins)
    if lv.sampling_fraction < 1.0:
        reg.SetMetricSamplingStrategy(reg.REGULAR if s.sampling == "regular" else reg.RANDOM)
        reg.SetMetricSamplingPercentage(lv.sampling_fraction, s.seed)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    # The moving gradient is only needed at the sample points: computing it there is
    # cheaper than a gradient image of the whole (cropped) moving volume.
    reg.MetricUseMovingImageGradientFilterOff()
    reg.MetricUseFixedImageGradientFilterOff()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=lv.learning_rate,
        minStep=lv.min_step,
        numberOfIterations=lv.max_iterations,
        relaxationFactor=s.relaxation,
        gradientMagnitudeTolerance=s.gradient_tolerance,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    if s.threads:
        reg.SetNumberOfThreads(s.threads)
    return reg


def _judge(
    s: RegistrationSettings, metric_value: float, hit_max: bool, stop: str,
) -> tuple[bool, str, str]:
    max_it = s.levels[-1].max_iterations
    if not math.isfinite(metric_value):
        return False, "failed", "the similarity metric is not a number (images do not overlap)"
    # A poor match is reported as such even when the optimiser also ran out of
    # iterations (on images that do not match it has nothing to converge to): the
    # images, not the optimiser, are what the user has to look at.
    ncc = math.sqrt(max(0.0, -metric_value)) if s.metric == "correlation" else 1.0
    if ncc < s.min_correlation:
        return False, "poor", (
            f"normalised correlation {ncc:.2f} is below the minimum {s.min_correlation:.2f}: "
            "the images do not match well enough to trust"
        )
    if hit_max:
        return False, "not_converged", (
            f"optimizer stopped at the maximum of {max_it} iterations "
            f"without converging ({stop.strip()})"
        )
    if s.metric == "correlation":
        return True, ("good" if ncc >= 0.95 else "acceptable"), ""
    return True, "good", ""
