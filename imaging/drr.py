"""Digitally reconstructed radiographs (DRRs) for a cone-beam kV imager.

kV geometry (room frame, IEC 61217, docs/geometry.md; see docs/imaging-2d-4d.md)
------------------------------------------------------------------------------
A kV imager is described by `KvGeometry`. `angle_deg` is the direction of the
kV *source* about room Y in the gantry convention: the source sits at

    S = SAD * (sin a, 0, cos a)            (a = 0: source above the couch, +Z)

and the detector plane is perpendicular to the central ray, SID from the
source (SID - SAD beyond the isocentre). On a linac whose kV arm is mounted
at 90 or 270 deg to the MV beam, a = gantry + 90 (or + 270); this module only
knows the kV source angle. Detector axes (beam's eye view from the source,
room +Y "up"):

    e_u = (cos a, 0, -sin a),   e_v = (0, 1, 0),   n = S / SAD (towards the source)

A detector image is a numpy array indexed [row, column] = [v, u]; pixel (c, r)
is at detector coordinates u = u0 + c * pitch, v = v0 + r * pitch (mm on the
detector plane) with (u0, v0) the centre of pixel (0, 0). A room point r
projects to (u, v) = SID / (SAD - r.n) * (r.e_u, r.e_v) (plus the detector
offset). The pixel values are line integrals of linear attenuation
(dimensionless, -ln(I / I0)).

How the DRR is made fast (no GPU, no scipy)
-------------------------------------------
SimpleITK's ResampleImageFilter has a multithreaded fast path for affine
maps (~8 ns per trilinear sample here), but a cone beam is not affine. The
rays are therefore cast through thin slabs perpendicular to the central ray:
inside one slab every ray is sampled on the lateral grid of the slab's centre
plane (one affine resample per slab), so a sample away from the centre plane
sits off its true ray by at most `max_smear_mm` (tan of the ray angle times
half the slab thickness; zero on the central ray, symmetric about the true
ray, so it blurs by a fraction of a voxel and never shifts). The depth range
is clipped to the body (non-air) box of the CT after the transform. Rays are
cast on a grid no finer than the CT can resolve (one ray per CT voxel at the
isocentre, `rays="auto"`), then resampled with an anti-aliased linear kernel
onto the detector; `rays="full"` casts one ray per detector pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from safety.geometry import orientation_matrix

MU_WATER_PER_MM = 0.019  # linear attenuation of water at ~70 keV effective energy
AIR_THRESHOLD_HU = -900.0  # HU below this counts as air when finding the body box

META_SAD = "IGRT_SAD"
META_SID = "IGRT_SID"
META_ANGLE = "IGRT_ANGLE_DEG"
META_KIND = "IGRT_KIND"
KIND_KV = "kv_line_integral"

RaysMode = Literal["auto", "full"]


@dataclass(frozen=True)
class KvGeometry:
    """One kV source/detector pair, in the room frame (mm, degrees)."""

    angle_deg: float = 0.0
    sad_mm: float = 1000.0  # source to isocentre
    sid_mm: float = 1500.0  # source to image (detector) plane
    size_px: tuple[int, int] = (512, 512)  # (columns along u, rows along v)
    pixel_mm: float = 0.6  # detector pitch (square pixels)
    offset_mm: tuple[float, float] = (0.0, 0.0)  # detector centre in (u, v)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sad_mm) and self.sad_mm > 0):
            raise ValueError(f"source-to-isocentre distance must be > 0 mm, got {self.sad_mm}")
        if not (math.isfinite(self.sid_mm) and self.sid_mm > self.sad_mm):
            raise ValueError(
                f"source-to-image distance {self.sid_mm} mm must exceed the "
                f"source-to-isocentre distance {self.sad_mm} mm"
            )
        if not (math.isfinite(self.pixel_mm) and self.pixel_mm > 0):
            raise ValueError(f"detector pixel pitch must be > 0 mm, got {self.pixel_mm}")
        if len(self.size_px) != 2 or min(self.size_px) < 2:
            raise ValueError(f"detector size must be 2 numbers >= 2 px, got {self.size_px}")
        if not math.isfinite(self.angle_deg):
            raise ValueError(f"kV angle must be finite, got {self.angle_deg}")

    # ---------------------------------------------------------------- frames
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(e_u, e_v, n): detector column axis, row axis, unit vector to the source."""
        a = math.radians(self.angle_deg)
        c, s = math.cos(a), math.sin(a)
        return np.array([c, 0.0, -s]), np.array([0.0, 1.0, 0.0]), np.array([s, 0.0, c])

    def source(self) -> np.ndarray:
        return self.sad_mm * self.axes()[2]

    @property
    def magnification(self) -> float:
        """Detector size of an object at the isocentre, per mm."""
        return self.sid_mm / self.sad_mm

    def origin_uv(self) -> tuple[float, float]:
        """Detector coordinates (mm) of the centre of pixel (0, 0)."""
        nu, nv = self.size_px
        return (
            self.offset_mm[0] - (nu - 1) * self.pixel_mm / 2.0,
            self.offset_mm[1] - (nv - 1) * self.pixel_mm / 2.0,
        )

    def project(self, room_points: np.ndarray) -> np.ndarray:
        """(N, 3) room points -> (N, 2) detector coordinates (u, v) in mm."""
        p = np.atleast_2d(np.asarray(room_points, dtype=float))
        e_u, e_v, n = self.axes()
        depth = self.sad_mm - p @ n
        scale = self.sid_mm / depth
        return np.stack([scale * (p @ e_u), scale * (p @ e_v)], axis=1)

    def to_pixel(self, uv: np.ndarray) -> np.ndarray:
        """Detector coordinates (N, 2) mm -> continuous (column, row) pixel index."""
        u0, v0 = self.origin_uv()
        uv = np.atleast_2d(uv)
        return np.stack([(uv[:, 0] - u0) / self.pixel_mm, (uv[:, 1] - v0) / self.pixel_mm], 1)

    def resized(self, size_px: tuple[int, int]) -> KvGeometry:
        """The same physical detector read out with another number of pixels."""
        nu, _nv = self.size_px
        width = (nu - 1) * self.pixel_mm
        new_pitch = width / (size_px[0] - 1)
        return replace(self, size_px=(int(size_px[0]), int(size_px[1])), pixel_mm=new_pitch)

    # -------------------------------------------------------------- metadata
    def to_metadata(self) -> dict[str, str]:
        return {
            META_KIND: KIND_KV,
            META_SAD: repr(float(self.sad_mm)),
            META_SID: repr(float(self.sid_mm)),
            META_ANGLE: repr(float(self.angle_deg)),
        }

    @classmethod
    def from_image(cls, img: sitk.Image, what: str = "kV image") -> KvGeometry:
        """Geometry of a 2D kV image carrying IGRT_* metadata; ValueError names what's wrong."""
        if img.GetDimension() != 2 and not (img.GetDimension() == 3 and img.GetSize()[2] == 1):
            raise ValueError(f"{what} must be a 2D image, got {img.GetDimension()}D")
        vals: dict[str, float] = {}
        for key in (META_SAD, META_SID, META_ANGLE):
            if not img.HasMetaDataKey(key):
                raise ValueError(f"{what} has no {key} metadata (kV geometry unknown)")
            text = img.GetMetaData(key).strip()
            try:
                vals[key] = float(text)
            except ValueError:
                raise ValueError(f"{what}: {key} is not a number ({text!r})") from None
        sp = img.GetSpacing()
        if abs(sp[0] - sp[1]) > 1e-6 * max(sp[0], sp[1]):
            raise ValueError(f"{what} has non-square pixels {sp[0]} x {sp[1]} mm")
        size = (int(img.GetSize()[0]), int(img.GetSize()[1]))
        o = img.GetOrigin()
        centre = (o[0] + (size[0] - 1) * sp[0] / 2.0, o[1] + (size[1] - 1) * sp[1] / 2.0)
        return cls(
            angle_deg=vals[META_ANGLE], sad_mm=vals[META_SAD], sid_mm=vals[META_SID],
            size_px=size, pixel_mm=float(sp[0]), offset_mm=(float(centre[0]), float(centre[1])),
        )


def kv_image(values: np.ndarray, geometry: KvGeometry) -> sitk.Image:
    """A 2D float32 sitk image (array [v, u]) carrying the kV geometry as metadata."""
    arr = np.asarray(values, dtype=np.float32)
    nu, nv = geometry.size_px
    if arr.shape != (nv, nu):
        raise ValueError(f"kV image array is {arr.shape}, geometry says (rows, cols) = {(nv, nu)}")
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((geometry.pixel_mm, geometry.pixel_mm))
    img.SetOrigin(geometry.origin_uv())
    for k, v in geometry.to_metadata().items():
        img.SetMetaData(k, v)
    return img


def read_kv(img: sitk.Image, what: str = "kV image") -> tuple[np.ndarray, KvGeometry]:
    geo = KvGeometry.from_image(img, what)
    arr = sitk.GetArrayFromImage(img).astype(np.float32).reshape(geo.size_px[1], geo.size_px[0])
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains non-finite pixel values")
    return arr, geo


# ------------------------------------------------------------------ volumes
@dataclass(frozen=True)
class AttenuationVolume:
    """A CT converted once to linear attenuation (1/mm, float32), plus the physical
    box (in the CT's own frame) that holds everything denser than air."""

    image: sitk.Image
    box_lo: np.ndarray
    box_hi: np.ndarray

    @classmethod
    def from_ct(cls, ct: sitk.Image, shrink: int = 1) -> AttenuationVolume:
        if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("the planning CT must be a scalar 3D image")
        img = sitk.Cast(ct, sitk.sitkFloat32)
        if shrink > 1:
            img = sitk.BinShrink(img, [int(shrink)] * 3)  # box average: anti-aliased
        hu = sitk.GetArrayViewFromImage(img)
        mu = np.maximum(hu * np.float32(MU_WATER_PER_MM / 1000.0) + np.float32(MU_WATER_PER_MM), 0)
        out = sitk.GetImageFromArray(mu.astype(np.float32, copy=False))
        out.CopyInformation(img)
        dense = hu > AIR_THRESHOLD_HU
        lo_idx, hi_idx = _occupied_index_box(dense)
        corners = []
        for bits in np.ndindex(2, 2, 2):
            idx = [float(hi_idx[d] + 1.0 if b else lo_idx[d] - 1.0) for d, b in enumerate(bits)]
            corners.append(out.TransformContinuousIndexToPhysicalPoint(idx))
        arr = np.array(corners)
        return cls(out, arr.min(axis=0), arr.max(axis=0))

    def corners(self) -> np.ndarray:
        lo, hi = self.box_lo, self.box_hi
        return np.array([[hi[d] if b else lo[d] for d, b in enumerate(bits)]
                         for bits in np.ndindex(2, 2, 2)])


def _occupied_index_box(mask_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) index box of the True voxels (the whole image when none)."""
    nz, ny, nx = mask_zyx.shape
    lo, hi = [], []
    for axis_keep, n in ((2, nx), (1, ny), (0, nz)):
        other = tuple(a for a in range(3) if a != axis_keep)
        prof = mask_zyx.any(axis=other)
        idx = np.flatnonzero(prof)
        if idx.size == 0:
            lo.append(0)
            hi.append(n - 1)
        else:
            lo.append(int(idx[0]))
            hi.append(int(idx[-1]))
    return np.array(lo), np.array(hi)


def room_to_planning(
    transform_4x4: np.ndarray, iso: tuple[float, float, float] | np.ndarray, patient_position: str,
) -> np.ndarray:
    """4x4 map room point -> planning point for registration T (planning -> daily):
    room r is daily point M^T r + iso, whose anatomy came from planning T^-1(.)."""
    m = orientation_matrix(patient_position)
    to_daily = np.eye(4)
    to_daily[:3, :3] = m.T
    to_daily[:3, 3] = np.asarray(iso, dtype=float)
    return np.linalg.inv(np.asarray(transform_4x4, dtype=float)) @ to_daily


# ------------------------------------------------------------------ projector
@dataclass(frozen=True)
class RayGrid:
    """Where rays are cast: a regular grid on the detector plane (mm)."""

    u0: float
    v0: float
    pitch: float
    nu: int
    nv: int

    def u(self) -> np.ndarray:
        return self.u0 + self.pitch * np.arange(self.nu)

    def v(self) -> np.ndarray:
        return self.v0 + self.pitch * np.arange(self.nv)


def detector_grid(geometry: KvGeometry) -> RayGrid:
    u0, v0 = geometry.origin_uv()
    return RayGrid(u0, v0, geometry.pixel_mm, geometry.size_px[0], geometry.size_px[1])


def roi_grid(geometry: KvGeometry, half_mm_at_iso: float, pitch_mm_at_iso: float) -> RayGrid:
    """A square ray grid centred on the detector centre covering +-half at the isocentre."""
    mag = geometry.magnification
    n = math.ceil(2 * half_mm_at_iso / pitch_mm_at_iso) + 1
    pitch = pitch_mm_at_iso * mag
    cu, cv = geometry.offset_mm
    return RayGrid(cu - (n - 1) * pitch / 2, cv - (n - 1) * pitch / 2, pitch, n, n)


class Projector:
    """Casts rays of one kV geometry through one attenuation volume.

    Build once, call `project(room_to_volume_4x4)` many times (the optimiser does).
    Not thread-safe (it owns a ResampleImageFilter); make one per thread.
    """

    def __init__(
        self,
        volume: AttenuationVolume,
        geometry: KvGeometry,
        grid: RayGrid,
        step_mm: float | None = None,
        max_smear_mm: float = 1.0,
        max_samples: int = 256,
        threads: int | None = None,
    ) -> None:
        self.volume = volume
        self.geometry = geometry
        self.grid = grid
        sp = volume.image.GetSpacing()
        # default step: the coarsest voxel side (finer steps measured no better)
        self.step_mm = float(step_mm) if step_mm else float(max(sp))
        self.max_samples = int(max_samples)
        e_u, e_v, n = geometry.axes()
        self._axes = (e_u, e_v, n)
        uu = grid.u()
        vv = grid.v()
        # tan of the largest ray angle to the central ray -> slab thickness for the smear bound
        tan_max = math.hypot(max(abs(uu[0]), abs(uu[-1])), max(abs(vv[0]), abs(vv[-1])))
        tan_max /= geometry.sid_mm
        self._slab_mm = 2.0 * max_smear_mm / max(tan_max, 1e-6)
        a = uu[None, :] / geometry.sid_mm
        b = vv[:, None] / geometry.sid_mm
        self._path = np.sqrt(1.0 + a * a + b * b).astype(np.float32)  # mm of ray per mm depth
        f = sitk.ResampleImageFilter()
        f.SetInterpolator(sitk.sitkLinear)
        f.SetOutputPixelType(sitk.sitkFloat32)
        f.SetDefaultPixelValue(0.0)
        f.SetOutputDirection([float(v) for v in np.column_stack([e_u, e_v, n]).ravel()])
        if threads:
            f.SetNumberOfThreads(int(threads))
        self._filter = f

    def depth_range(self, room_to_volume: np.ndarray) -> tuple[float, float]:
        """Source distances (mm along the central ray) spanned by the body box."""
        vol_to_room = np.linalg.inv(room_to_volume)
        c = self.volume.corners()
        r = c @ vol_to_room[:3, :3].T + vol_to_room[:3, 3]
        depth = self.geometry.sad_mm - r @ self._axes[2]
        return float(depth.min()), float(depth.max())

    def project(self, room_to_volume: np.ndarray) -> np.ndarray:
        """Line integrals (float32 [v, u] on the ray grid) with the volume placed in the
        room by the inverse of `room_to_volume` (4x4: room point -> volume point)."""
        g = self.geometry
        e_u, e_v, n = self._axes
        src = g.source()
        near, far = self.depth_range(room_to_volume)
        near = max(near, 1.0)
        if far <= near:
            return np.zeros((self.grid.nv, self.grid.nu), np.float32)
        # Sample planes and slabs sit on a fixed lattice of source distances, so a
        # small change of the transform never shifts where the rays are sampled:
        # the DRR, and the optimiser's cost, stay smooth functions of the pose.
        step = max(self.step_mm, (far - near) / self.max_samples)
        # quantised, so the lattice only changes when the depth range crosses a bound
        step = self.step_mm * math.ceil(4.0 * step / self.step_mm - 1e-9) / 4.0
        k_near = math.floor(near / step)
        k_far = math.ceil(far / step)
        per_slab = max(1, int(self._slab_mm // step))
        tx = sitk.AffineTransform(3)
        tx.SetMatrix([float(v) for v in room_to_volume[:3, :3].ravel()])
        tx.SetTranslation([float(v) for v in room_to_volume[:3, 3]])
        f = self._filter
        f.SetTransform(tx)
        acc = np.zeros((self.grid.nv, self.grid.nu), np.float32)
        sid = g.sid_mm
        for slab in range(k_near // per_slab, (k_far - 1) // per_slab + 1):
            lo = max(slab * per_slab, k_near)
            hi = min((slab + 1) * per_slab, k_far)  # lattice samples lo .. hi-1
            if hi <= lo:
                continue
            d_mid = (slab * per_slab + per_slab / 2.0) * step  # the slab's centre plane
            d_far = (hi - 1 + 0.5) * step  # farthest sample (index 0: far end first)
            scale = d_mid / sid
            origin = (src - d_far * n + scale * (self.grid.u0 * e_u + self.grid.v0 * e_v))
            f.SetSize([self.grid.nu, self.grid.nv, hi - lo])
            f.SetOutputSpacing([self.grid.pitch * scale, self.grid.pitch * scale, step])
            f.SetOutputOrigin([float(v) for v in origin])
            out = f.Execute(self.volume.image)
            acc += sitk.GetArrayViewFromImage(out).sum(axis=0)
        return acc * (self._path * np.float32(step))


# ------------------------------------------------------------ 2D resampling
def linear_weights(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(len(dst), len(src)) matrix resampling regular samples at `src` positions onto
    `dst` positions with a tent kernel as wide as the coarser of the two pitches (plain
    linear interpolation when upsampling, area-like averaging when downsampling)."""
    ps = abs(float(src[1] - src[0])) if len(src) > 1 else 1.0
    pd = abs(float(dst[1] - dst[0])) if len(dst) > 1 else ps
    width = max(ps, pd)
    w = np.maximum(0.0, 1.0 - np.abs(dst[:, None] - src[None, :]) / width)
    tot = w.sum(axis=1, keepdims=True)
    return (w / np.where(tot > 0, tot, 1.0)).astype(np.float32)


def resample_grid(values: np.ndarray, src: RayGrid, dst: RayGrid) -> np.ndarray:
    wv = linear_weights(src.v(), dst.v())
    wu = linear_weights(src.u(), dst.u())
    return (wv @ np.asarray(values, np.float32)) @ wu.T


# --------------------------------------------------------------- public API
def auto_ray_grid(geometry: KvGeometry, volume: AttenuationVolume) -> RayGrid:
    """Rays one CT voxel apart at the isocentre (never finer than the detector)."""
    det = detector_grid(geometry)
    pitch = max(min(volume.image.GetSpacing()) * geometry.magnification, geometry.pixel_mm)
    width_u = (det.nu - 1) * det.pitch
    width_v = (det.nv - 1) * det.pitch
    nu = max(2, math.ceil(width_u / pitch) + 1)
    nv = max(2, math.ceil(width_v / pitch) + 1)
    # Same pitch on both axes; the v extent may end a fraction of a ray short of
    # the detector edge, which the resampling kernel covers.
    p = width_u / (nu - 1)
    nv = max(2, math.ceil(width_v / p) + 1)
    return RayGrid(det.u0, det.v0, p, nu, nv)


def drr(
    ct: sitk.Image | AttenuationVolume,
    geometry: KvGeometry,
    transform_4x4: np.ndarray | None = None,
    iso: tuple[float, float, float] = (0.0, 0.0, 0.0),
    patient_position: str = "HFS",
    rays: RaysMode = "auto",
    max_smear_mm: float = 1.0,
    **projector_kw: Any,
) -> np.ndarray:
    """One DRR (float32 [rows v, columns u], line integrals) on the detector of
    `geometry`, of the planning CT `ct` whose anatomy is moved into the daily frame
    by `transform_4x4` (ITK planning -> daily; identity = perfect set-up)."""
    vol = ct if isinstance(ct, AttenuationVolume) else AttenuationVolume.from_ct(ct)
    t = np.eye(4) if transform_4x4 is None else np.asarray(transform_4x4, dtype=float)
    det = detector_grid(geometry)
    grid = det if rays == "full" else auto_ray_grid(geometry, vol)
    proj = Projector(vol, geometry, grid, max_smear_mm=max_smear_mm, **projector_kw)
    values = proj.project(room_to_planning(t, iso, patient_position))
    if grid == det:
        return values
    return resample_grid(values, grid, det)
