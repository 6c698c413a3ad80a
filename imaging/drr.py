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

How the DRR is made fast (compiled C, no GPU)
--------------------------------------------
Rays are cast by Joseph's method in a compiled kernel (imaging/_raycast.c, built
when the package is installed; not a JIT, see `_kernel`): each ray is clipped to
the CT's body (non-air) box, then stepped one voxel plane at a time along its
dominant axis, with bilinear interpolation in the other two axes; the sum times
the ray length per plane is the line integral. A per-column table of where
tissue starts and ends along each axis trims the air at both ends of every ray
(imaging/voxel_grid.py). Sample positions are the volume's own planes, so a
small change of the pose moves the samples continuously and the DRR (and the
2D/3D optimiser's cost) stays smooth in the pose. Dense rays (a full DRR) are
cast eight neighbours of a row at a time in vector registers, from a copy of the
CT stored with the row's axis contiguous (`TILE_RAY_PITCH_VOXELS`). Rows of the
detector are shared between threads (the kernel releases the GIL). `rays="auto"`
casts one ray per CT voxel at the isocentre (never finer than the detector) and
resamples onto the detector with an anti-aliased linear kernel; `rays="full"` casts
one ray per detector pixel.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import SimpleITK as sitk

from imaging.voxel_grid import Layout, VoxelGrid, layout_for
from safety.geometry import orientation_matrix

log = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.019  # linear attenuation of water at ~70 keV effective energy
AIR_THRESHOLD_HU = -900.0  # HU below this counts as air when finding the body box
# attenuation at that threshold: rays skip voxels at or below it (see VoxelGrid)
MU_AIR_PER_MM = MU_WATER_PER_MM * (1.0 + AIR_THRESHOLD_HU / 1000.0)

META_SAD = "IGRT_SAD"
META_SID = "IGRT_SID"
META_ANGLE = "IGRT_ANGLE_DEG"
META_KIND = "IGRT_KIND"
KIND_KV = "kv_line_integral"

RaysMode = Literal["auto", "full"]

# Rays at most this far apart (at the isocentre, in voxels of the CT axis along the
# detector rows) read a copy of the CT stored with that axis contiguous, from which
# the kernel casts 8 neighbouring rays of a row together (imaging/_raycast.c,
# cast_tile: their samples on a plane must lie within the 8 voxels it reads, so 7
# ray pitches within 6 voxels). Measured (one thread, CPU time, 2 shared cores):
# full 512x512 DRR (0.27-0.4 voxel) 135-140 instead of 245-255 ms, rays="auto" at 90 deg
# (0.75 voxel) 28 instead of 32 ms, the 2D/3D registration unchanged. Sparser rays
# keep voxel_grid.layout_for's order.
TILE_RAY_PITCH_VOXELS = 0.85


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
        if len(self.offset_mm) != 2 or not all(math.isfinite(v) for v in self.offset_mm):
            raise ValueError(f"detector offset must be 2 finite numbers in mm, got {self.offset_mm}")

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
        if not np.all(np.isfinite(hu)):
            raise ValueError("the planning CT contains non-finite voxel values")
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

    @functools.cached_property
    def voxel_grid(self) -> VoxelGrid:
        """The arrays the ray caster reads (built on first use, then kept)."""
        return VoxelGrid.of(self.image, self.corners(), MU_AIR_PER_MM)

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


def _kernel() -> Callable[..., None]:
    """The ray caster: imaging/_raycast.c, compiled when the package is installed
    (`make setup`). Not a JIT: igrtd runs with MemoryDenyWriteExecute=yes, under
    which no process may make memory executable at run time. Imported here, not
    with the module, so code that only needs KvGeometry loads no extension."""
    try:
        from imaging import _raycast
    except ImportError as exc:
        raise RuntimeError(f"the DRR ray caster is not built ({exc}); run `make setup` "
                           "(pip install -e .) to compile imaging/_raycast.c") from None
    return _raycast.cast_rows


_POOL_LOCK = threading.Lock()
_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                            thread_name_prefix="igrt-drr"))
        return _POOL[0]


def warm_up() -> float:
    """Load the ray caster and cast once (page in the extension, start the row
    threads); seconds it took. The first DRR of a process pays this otherwise."""
    t0 = time.perf_counter()
    img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    tiny = AttenuationVolume.from_ct(img)
    geo = KvGeometry(size_px=(2, 2))
    Projector(tiny, geo, detector_grid(geo), threads=1).project(np.eye(4))
    return time.perf_counter() - t0


class Projector:
    """Casts rays of one kV geometry through one attenuation volume.

    Build once, call `project(room_to_volume_4x4)` many times (the optimiser does).
    `threads`: detector rows shared between this many threads (default: one per
    CPU); 1 runs in the calling thread, for callers that parallelise themselves.
    """

    def __init__(
        self, volume: AttenuationVolume, geometry: KvGeometry, grid: RayGrid,
        threads: int | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.volume = volume
        self.geometry = geometry
        self.grid = grid
        self.threads = int(threads) if threads else (os.cpu_count() or 1)
        self._voxels = volume.voxel_grid
        e_u, e_v, n = geometry.axes()
        self._source = geometry.source()
        self._pixel0 = self._source - geometry.sid_mm * n + grid.u0 * e_u + grid.v0 * e_v
        self._step_u = grid.pitch * e_u
        self._step_v = grid.pitch * e_v
        self._ray_pitch = grid.pitch / geometry.magnification  # at the isocentre

    def _layout(self, room_to_index: np.ndarray) -> Layout:
        e_u, _e_v, n = self.geometry.axes()
        direction, across = room_to_index @ n, room_to_index @ e_u
        spacing = self._voxels.spacing_xyz
        # layout_for's order for rays far apart: the axis along the detector rows contiguous
        along_rows = layout_for(direction, across, math.inf, spacing)
        if self._ray_pitch <= TILE_RAY_PITCH_VOXELS * float(spacing[along_rows[2]]):
            return along_rows
        return layout_for(direction, across, self._ray_pitch, spacing)

    def project(self, room_to_volume: np.ndarray) -> np.ndarray:
        """Line integrals (float32 [v, u] on the ray grid) with the volume placed in the
        room by the inverse of `room_to_volume` (4x4: room point -> volume point)."""
        m = np.asarray(room_to_volume, dtype=float)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise ValueError("room-to-volume transform must be a finite 4x4 matrix")
        vg = self._voxels
        to_index = vg.physical_to_index @ m
        voxels, strides = vg.layout(self._layout(to_index[:3, :3]))
        args = (voxels, strides, vg.shape_xyz, np.ascontiguousarray(to_index[:3]),
                self._source, self._pixel0, self._step_u, self._step_v, vg.box_lo, vg.box_hi,
                vg.skip_first, vg.skip_last)
        out = np.empty((self.grid.nv, self.grid.nu), np.float32)
        kernel = _kernel()
        parts = min(self.threads, self.grid.nv)
        if parts == 1:
            kernel(*args, 0, 1, out)
            return out
        # rows interleaved: neighbouring rows cost about the same, so the threads finish together
        jobs = [_pool().submit(kernel, *args, j, parts, out) for j in range(parts)]
        for job in jobs:
            job.result()
        return out


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
    """`values` [v, u] on `src` resampled onto `dst` with `linear_weights` per axis.

    Applied as a few taps per output sample rather than as dense matrix products:
    a 512x512 kV image onto a 65x65 grid is 17 M multiply-adds as a matrix
    product, and multithreaded BLAS took 30 ms for it on a loaded machine."""
    rows_idx, rows_w = _taps(linear_weights(src.v(), dst.v()))
    cols_idx, cols_w = _taps(linear_weights(src.u(), dst.u()))
    img = np.asarray(values, np.float32)
    by_rows = np.zeros((dst.nv, img.shape[1]), np.float32)
    for t in range(rows_idx.shape[1]):
        by_rows += rows_w[:, t, None] * img[rows_idx[:, t], :]
    out = np.zeros((dst.nv, dst.nu), np.float32)
    for t in range(cols_idx.shape[1]):
        out += by_rows[:, cols_idx[:, t]] * cols_w[None, :, t]
    return out


def _taps(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A banded weight matrix as (indices, weights) [output, tap]; padding taps weigh 0."""
    nonzero = weights != 0
    some = nonzero.any(axis=1)  # an output outside the source's reach has no taps
    first = np.where(some, np.argmax(nonzero, axis=1), 0)
    last = np.where(some, weights.shape[1] - 1 - np.argmax(nonzero[:, ::-1], axis=1), 0)
    width = max(int(np.max(last - first)) + 1, 1)
    idx = first[:, None] + np.arange(width)[None, :]
    inside = idx <= last[:, None]
    idx = np.minimum(idx, weights.shape[1] - 1)
    taps = np.where(inside, np.take_along_axis(weights, idx, axis=1), 0.0)
    return idx, taps.astype(np.float32)


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
    threads: int | None = None,
) -> np.ndarray:
    """One DRR (float32 [rows v, columns u], line integrals) on the detector of
    `geometry`, of the planning CT `ct` whose anatomy is moved into the daily frame
    by `transform_4x4` (ITK planning -> daily; identity = perfect set-up)."""
    vol = ct if isinstance(ct, AttenuationVolume) else AttenuationVolume.from_ct(ct)
    t = np.eye(4) if transform_4x4 is None else np.asarray(transform_4x4, dtype=float)
    det = detector_grid(geometry)
    grid = det if rays == "full" else auto_ray_grid(geometry, vol)
    values = Projector(vol, geometry, grid, threads).project(
        room_to_planning(t, iso, patient_position))
    if grid == det:
        return values
    return resample_grid(values, grid, det)
