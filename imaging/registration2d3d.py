"""6-DoF 2D/3D registration of a kV pair (or more views) to the planning CT.

The unknown is the rigid motion G of the anatomy in the room frame, rotation
about the machine isocentre (where the planned isocentre was put):
G(r) = R r + t, with parameters x = (tx, ty, tz, rx, ry, rz) in mm and deg
(room X, Y, Z; R = Rz Ry Rx). The result is handed over in the geometry
contract's convention, T = Phi^-1 G Phi with Phi(q) = M (q - iso) (ITK
fixed = planning CT -> moving = daily), in the same RegistrationResult as the
3D registration.

Similarity: normalised cross-correlation (NCC) between the DRR and the kV
image of each view, over a square region of interest about the isocentre.
NCC ignores the unknown linear scaling between the model and the detector
(exposure, log-conversion offsets). Maximising the mean NCC is minimising
the sum of squared differences between zero-mean, unit-norm images, a least
squares problem, so it is solved by Levenberg-Marquardt with a forward
difference Jacobian (6 DRR pairs per iteration): it converges in a handful of
iterations from a few mm, where a derivative-free search would need hundreds
of DRRs.

Two levels: a coarse one (CT binned 2x, rays 3 mm apart at the isocentre, kV
images averaged to the same grid) brings a 10 mm / 2 deg error into the
capture range of the fine one (full CT, rays 2.5 mm apart). Before the first
level a 2D cross-correlation of each view with the unmoved DRR estimates the
translation (two in-plane shifts per view, combined by least squares), so the
optimiser starts close to the answer even for large shifts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imaging.drr import (
    AttenuationVolume,
    KvGeometry,
    Projector,
    RayGrid,
    detector_grid,
    read_kv,
    resample_grid,
    roi_grid,
)
from imaging.registration import RegistrationResult, rotation_angles_deg
from safety.geometry import orientation_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Level:
    shrink: int  # CT binning factor (rays sample every plane of the binned CT)
    pitch_mm: float  # ray spacing at the isocentre
    tolerance: float  # stop when no parameter moves more than this (mm or deg)
    fd_step: float  # central-difference step for the Jacobian (mm and deg)
    central_differences: bool = True
    max_iterations: int = 25


@dataclass(frozen=True)
class Registration2D3DSettings:
    roi_half_mm: float = 80.0  # half side of the square ROI at the isocentre
    levels: tuple[Level, ...] = (
        Level(shrink=2, pitch_mm=3.0, tolerance=0.1, fd_step=0.5, central_differences=False),
        Level(shrink=1, pitch_mm=2.5, tolerance=0.05, fd_step=0.25),
    )
    initial_shift_search: bool = True
    # Band-pass applied to DRRs and kV images before NCC (Gaussian sigmas at the
    # isocentre): the high-pass removes scatter and the smooth body-thickness
    # profile, which carry no position information but bias the match.
    highpass_sigma_mm: float = 12.0
    smooth_sigma_mm: float = 0.0
    local_normalisation: bool = True
    compare_intensity: bool = True
    min_correlation: float = 0.5
    threads: int = 2  # kV views projected side by side
    max_translation_mm: float = 40.0  # beyond this the answer is not trusted
    max_rotation_deg: float = 10.0


@dataclass(frozen=True)
class KvView:
    image: np.ndarray  # [rows v, columns u] line integrals
    geometry: KvGeometry

    @classmethod
    def from_sitk(cls, img: sitk.Image, what: str = "kV image") -> KvView:
        arr, geo = read_kv(img, what)
        return cls(arr, geo)


@dataclass
class _ViewLevel:
    projector: Projector
    band: _BandPass
    target: np.ndarray  # band-passed, zero-mean unit-norm kV on the ray grid


def _gauss_matrix(n: int, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0:
        return np.eye(n, dtype=np.float32)
    i = np.arange(n)
    w = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma_px) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


class _BandPass:
    """img -> G_smooth img - G_wide img (separable, as small dense matrices)."""

    def __init__(self, grid: RayGrid, pitch_iso: float, s: Registration2D3DSettings) -> None:
        self.sv = _gauss_matrix(grid.nv, s.smooth_sigma_mm / pitch_iso)
        self.su = _gauss_matrix(grid.nu, s.smooth_sigma_mm / pitch_iso)
        self.wv = _gauss_matrix(grid.nv, s.highpass_sigma_mm / pitch_iso)
        self.wu = _gauss_matrix(grid.nu, s.highpass_sigma_mm / pitch_iso)
        self.on = s.highpass_sigma_mm > 0
        self.local = s.local_normalisation
        self.intensity = s.compare_intensity

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.intensity:
            # Scatter adds a smooth signal to the transmitted intensity: compare
            # intensities so that the high-pass removes it (in line integrals it
            # would be a non-linear, anatomy-dependent distortion).
            img = np.exp(-img)
        out = self.sv @ img @ self.su.T
        if self.on:
            out = out - self.wv @ img @ self.wu.T
            if self.local:
                # Local contrast normalisation: scatter (and the detector's log
                # conversion of it) compresses contrast by a slowly varying factor
                # that the DRR does not model; dividing by the local RMS removes it.
                energy = self.wv @ (out * out) @ self.wu.T
                out = out / np.sqrt(energy + 1e-3 * float(energy.mean()) + 1e-12)
        return out


@dataclass
class _Trace:
    drrs: int = 0
    iterations: list[int] = field(default_factory=list)


def params_to_room_motion(x: np.ndarray) -> np.ndarray:
    """4x4 G(r) = R r + t in the room frame, R = Rz Ry Rx (degrees)."""
    rx, ry, rz = (math.radians(float(v)) for v in x[3:6])
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), \
        math.cos(rz), math.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    g = np.eye(4)
    g[:3, :3] = r_z @ r_y @ r_x
    g[:3, 3] = x[:3]
    return g


def _phi(iso: np.ndarray, patient_position: str) -> np.ndarray:
    """Phi: daily point q -> room point M (q - iso)."""
    m = orientation_matrix(patient_position)
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = -m @ iso
    return out


def room_motion_to_itk(g: np.ndarray, iso: np.ndarray, patient_position: str) -> np.ndarray:
    phi = _phi(iso, patient_position)
    return np.linalg.inv(phi) @ g @ phi


def itk_to_room_params(t: np.ndarray, iso: np.ndarray, patient_position: str) -> np.ndarray:
    phi = _phi(iso, patient_position)
    g = phi @ np.asarray(t, float) @ np.linalg.inv(phi)
    r = g[:3, :3]
    ry = -math.asin(max(-1.0, min(1.0, float(r[2, 0]))))
    rx = math.atan2(float(r[2, 1]), float(r[2, 2]))
    rz = math.atan2(float(r[1, 0]), float(r[0, 0]))
    return np.array([*g[:3, 3], math.degrees(rx), math.degrees(ry), math.degrees(rz)])


def _normalise(img: np.ndarray) -> np.ndarray:
    d = img - img.mean()
    n = float(np.linalg.norm(d))
    return d / n if n > 0 else d


def _shift_by_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dv, du) in pixels such that b(x) ~ a(x - d): peak of the FFT cross-correlation
    of Hann-windowed, zero-mean images, refined by a parabola through the peak."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.rfft2((a - a.mean()) * win, s=(2 * a.shape[0], 2 * a.shape[1]))
    fb = np.fft.rfft2((b - b.mean()) * win, s=(2 * a.shape[0], 2 * a.shape[1]))
    cc = np.fft.irfft2(fb * np.conj(fa), s=(2 * a.shape[0], 2 * a.shape[1]))
    i, j = (int(v) for v in np.unravel_index(int(np.argmax(cc)), cc.shape))

    def sub(c: np.ndarray, k: int) -> float:
        n = c.shape[0]
        y0, y1, y2 = c[(k - 1) % n], c[k], c[(k + 1) % n]
        den = y0 - 2 * y1 + y2
        return 0.0 if den == 0 else 0.5 * (y0 - y2) / den

    di = i + sub(cc[:, j], i)
    dj = j + sub(cc[i, :], j)
    if di > cc.shape[0] / 2:
        di -= cc.shape[0]
    if dj > cc.shape[1] / 2:
        dj -= cc.shape[1]
    return float(di), float(dj)


class _Problem:
    def __init__(
        self, views: list[_ViewLevel], phi_inv: np.ndarray, trace: _Trace,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self.views = views
        self.phi_inv = phi_inv
        self.trace = trace
        self.pool = pool

    def drrs(self, x: np.ndarray) -> list[np.ndarray]:
        room_to_vol = self.phi_inv @ np.linalg.inv(params_to_room_motion(x))
        self.trace.drrs += len(self.views)

        def one(v: _ViewLevel) -> np.ndarray:
            return _normalise(v.band(v.projector.project(room_to_vol)))

        if self.pool is None:
            return [one(v) for v in self.views]
        # The ray caster releases the GIL (imaging/drr.py): the views run side by side.
        return list(self.pool.map(one, self.views))

    def residual(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = self.drrs(x)
        r = np.concatenate([(zi - v.target).ravel() for zi, v in zip(z, self.views)])
        ncc = np.array([float((zi * v.target).sum()) for zi, v in zip(z, self.views)])
        return r, ncc


def _jacobian(
    prob: _Problem, x: np.ndarray, h: float, r0: np.ndarray, central: bool,
) -> np.ndarray:
    # Central differences on the fine level: the cost is sharply curved at the scale
    # of a voxel, and a forward difference mixes that curvature into the gradient,
    # which stalled LM 0.3 deg / 0.5 mm short of the minimum. The coarse level only
    # has to get close, so it saves half the DRRs with forward differences.
    jac = np.empty((r0.size, 6))
    for i in range(6):
        xp = x.copy()
        xp[i] += h
        if central:
            xm = x.copy()
            xm[i] -= h
            jac[:, i] = (prob.residual(xp)[0] - prob.residual(xm)[0]) / (2 * h)
        else:
            jac[:, i] = (prob.residual(xp)[0] - r0) / h
    return jac


def _levenberg_marquardt(
    prob: _Problem, x0: np.ndarray, max_iter: int, tol: float, fd_step: float, central: bool,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """LM on the stacked residuals. The Jacobian (12 DRRs per view) is computed at
    the start and after a failed step only; accepted steps update it with Broyden's
    rank-one formula, which costs no DRRs."""
    x = x0.copy()
    r, ncc = prob.residual(x)
    cost = float(r @ r)
    jac = _jacobian(prob, x, fd_step, r, central)
    fresh = True
    lam = 1e-3
    it = 0
    while it < max_iter:
        it += 1
        a = jac.T @ jac
        g = jac.T @ r
        step = -np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), g)
        rn, nccn = prob.residual(x + step)
        cn = float(rn @ rn)
        if cn < cost:
            jac += np.outer((rn - r) - jac @ step, step) / float(step @ step)
            fresh = False
            x, r, ncc, cost = x + step, rn, nccn, cn
            lam = max(lam / 4.0, 1e-6)
            if np.all(np.abs(step) < tol):
                return x, ncc, it, True
            continue
        if not fresh:
            jac = _jacobian(prob, x, fd_step, r, central)
            fresh = True
            continue
        lam *= 5.0
        if np.all(np.abs(step) < tol) or lam > 1e4:
            return x, ncc, it, True  # no descent left at this scale: a minimum
    return x, ncc, it, False


def register_2d3d(
    plan_ct: sitk.Image | Sequence[AttenuationVolume],
    views: Sequence[KvView],
    iso: tuple[float, float, float],
    patient_position: str = "HFS",
    *,
    initial: np.ndarray | None = None,
    settings: Registration2D3DSettings | None = None,
) -> RegistrationResult:
    """Register kV `views` (at least two angles) to the planning CT.

    `plan_ct` may be a list of prepared AttenuationVolumes, one per level (see
    `prepare_volumes`), to skip the per-call HU conversion. Raises ValueError for
    unusable input; returns converged=False with a reason when the match is not
    to be trusted.
    """
    s = settings or Registration2D3DSettings()
    t0 = time.perf_counter()
    if len(views) < 2:
        raise ValueError(f"2D/3D registration needs at least 2 kV views, got {len(views)}")
    angles = [v.geometry.angle_deg for v in views]
    spread = max(abs(math.sin(math.radians(a - b))) for a in angles for b in angles)
    if spread < math.sin(math.radians(20)):
        raise ValueError(
            f"kV views at {', '.join(f'{a:g}' for a in angles)} deg are less than 20 deg apart: "
            "depth along the beams would be unobservable"
        )
    iso_v = np.asarray(iso, dtype=float)
    if iso_v.shape != (3,) or not np.all(np.isfinite(iso_v)):
        raise ValueError(f"isocentre must be 3 finite numbers in mm, got {iso!r}")
    vols = list(plan_ct) if not isinstance(plan_ct, sitk.Image) else prepare_volumes(plan_ct, s)
    if len(vols) != len(s.levels):
        raise ValueError("one prepared volume is needed per registration level")
    lo, hi = vols[-1].box_lo, vols[-1].box_hi
    if np.any(iso_v < lo) or np.any(iso_v > hi):
        raise ValueError(
            f"isocentre {tuple(round(float(v), 1) for v in iso_v)} mm is outside the body "
            "in the planning CT"
        )
    phi = _phi(iso_v, patient_position)
    phi_inv = np.linalg.inv(phi)
    x = np.zeros(6) if initial is None else itk_to_room_params(initial, iso_v, patient_position)
    trace = _Trace()
    with ThreadPoolExecutor(max_workers=min(len(views), s.threads)) as pool:
        x, ncc, converged = _run_levels(s, vols, views, x, phi_inv, trace, pool)
    g = params_to_room_motion(x)
    matrix = room_motion_to_itk(g, iso_v, patient_position)
    metric = float(np.mean(ncc))
    ok, quality, reason = _judge(s, x, ncc, converged)
    if not ok:
        log.warning("2D/3D registration refused: %s", reason)
    t_iso = matrix[:3, :3] @ iso_v + matrix[:3, 3] - iso_v
    return RegistrationResult(
        matrix=matrix,
        translation_mm=(float(t_iso[0]), float(t_iso[1]), float(t_iso[2])),
        rotation_deg=rotation_angles_deg(matrix[:3, :3]),
        metric=metric,
        seconds=time.perf_counter() - t0,
        converged=ok,
        iterations=sum(trace.iterations),
        quality=quality,
        reason=reason,
        metric_name="ncc_2d3d",
        stop_condition=f"{trace.drrs} DRRs",
        level_iterations=tuple(trace.iterations),
    )


def _run_levels(
    s: Registration2D3DSettings,
    vols: list[AttenuationVolume],
    views: Sequence[KvView],
    x: np.ndarray,
    phi_inv: np.ndarray,
    trace: _Trace,
    pool: ThreadPoolExecutor,
) -> tuple[np.ndarray, np.ndarray, bool]:
    ncc = np.zeros(len(views))
    converged = False
    for li, (lvl, vol) in enumerate(zip(s.levels, vols)):
        vlevels = []
        for v in views:
            grid = roi_grid(v.geometry, s.roi_half_mm, lvl.pitch_mm)
            # one thread per projector: the views already run in parallel
            proj = Projector(vol, v.geometry, grid, threads=1)
            band = _BandPass(grid, lvl.pitch_mm, s)
            target = _normalise(band(resample_grid(v.image, detector_grid(v.geometry), grid)))
            vlevels.append(_ViewLevel(proj, band, target))
        prob = _Problem(vlevels, phi_inv, trace, pool)
        if li == 0 and s.initial_shift_search:
            x = _initial_translation(prob, x, [v.geometry for v in views])
        x, ncc, it, converged = _levenberg_marquardt(
            prob, x, lvl.max_iterations, lvl.tolerance, lvl.fd_step, lvl.central_differences)
        trace.iterations.append(it)
    return x, ncc, converged


def prepare_volumes(
    plan_ct: sitk.Image, settings: Registration2D3DSettings | None = None,
) -> list[AttenuationVolume]:
    """The planning CT as attenuation, once per level (cache this per plan)."""
    s = settings or Registration2D3DSettings()
    return [AttenuationVolume.from_ct(plan_ct, shrink=lvl.shrink) for lvl in s.levels]


def _initial_translation(prob: _Problem, x: np.ndarray, geos: list[KvGeometry]) -> np.ndarray:
    """Room translation from in-plane 2D shifts of each view (least squares)."""
    z = prob.drrs(x)
    rows, rhs = [], []
    for zi, v, g in zip(z, prob.views, geos):
        dv, du = _shift_by_correlation(zi, v.target)
        pitch_iso = v.projector.grid.pitch / g.magnification
        e_u, e_v, _ = g.axes()
        rows += [e_u, e_v]
        rhs += [du * pitch_iso, dv * pitch_iso]
    d, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    out = x.copy()
    out[:3] += d
    return out


def _judge(
    s: Registration2D3DSettings, x: np.ndarray, ncc: np.ndarray, converged: bool,
) -> tuple[bool, str, str]:
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(ncc)):
        return False, "failed", "the similarity is not a number (the DRRs miss the kV images)"
    if not converged:
        return False, "not_converged", "optimizer reached its iteration limit without converging"
    shift = float(np.linalg.norm(x[:3]))
    if shift > s.max_translation_mm:
        return False, "implausible", (
            f"translation {shift:.1f} mm exceeds the plausible {s.max_translation_mm:.1f} mm")
    rot = float(np.max(np.abs(x[3:])))
    if rot > s.max_rotation_deg:
        return False, "implausible", (
            f"rotation {rot:.1f} deg exceeds the plausible {s.max_rotation_deg:.1f} deg")
    worst = float(np.min(ncc))
    if worst < s.min_correlation:
        return False, "poor", (
            f"normalised correlation {worst:.2f} is below the minimum "
            f"{s.min_correlation:.2f}: the DRRs do not match the kV images well enough")
    return True, ("good" if worst >= 0.8 else "acceptable"), ""


def roi_of(view: KvView, settings: Registration2D3DSettings | None = None) -> RayGrid:
    s = settings or Registration2D3DSettings()
    return roi_grid(view.geometry, s.roi_half_mm, s.levels[-1].pitch_mm)
