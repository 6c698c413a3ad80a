"""Target position from a stereo pair of kV images: implanted-marker tracking.

Fast enough for a beam-hold loop (well under a millisecond per view for a
typical search region): no registration, only work on a small region of
interest around where each marker is expected.

Per view and marker:
1. crop a square ROI around the projection of the marker's planned position,
   as large as `search_radius_mm` (at the isocentre) requires;
2. remove the anatomy: subtract a local mean (box filter a few marker sizes
   wide), which keeps a small bright marker and flattens soft tissue/bone;
3. matched filter: a box about one marker wide; the peak is the candidate;
4. accept it only with a contrast-to-noise ratio (peak over a robust noise
   estimate of the ROI) of at least `min_cnr`, and not on the ROI border
   (a marker at the border may be outside the search region);
5. sub-pixel position: intensity-weighted centroid around the peak.

The two rays (source -> detected detector point) are intersected in the least
squares sense; if they miss each other by more than `max_ray_miss_mm` the
detections do not belong to one marker and the estimate is refused. The
target estimate is the planned target position plus the mean marker
displacement (translation only: rotations of the marker constellation are
not estimated).

An invalid estimate is a normal result (`TargetEstimate.valid` False with a
one-line reason), never an exception: the beam-hold policy treats it as "no
estimate", which holds the beam if it lasts.

Geometry: imaging.drr.KvGeometry (docs/imaging-2d-4d.md). Images are numpy
arrays [row, column] of line integrals (higher = more attenuation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from imaging.drr import KvGeometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KvFrame:
    """One set of simultaneous kV images (one per imager), as delivered."""

    frame_id: int
    t_acquired: float  # monotonic s at which the images became available to the host
    images: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class MarkerDetection:
    view: int
    marker: int
    pixel: tuple[float, float]  # (column, row), sub-pixel
    cnr: float


@dataclass(frozen=True)
class TargetEstimate:
    """Target position (room frame, mm), or why there is none."""

    position_mm: np.ndarray | None
    reason: str = ""
    markers_mm: tuple[tuple[float, float, float], ...] = ()
    ray_miss_mm: float = math.nan
    min_cnr: float = math.nan
    detections: tuple[MarkerDetection, ...] = field(default=(), repr=False)

    @property
    def valid(self) -> bool:
        return self.position_mm is not None


@dataclass(frozen=True)
class _View:
    """Per-view constants, computed once."""

    half: int  # ROI half width, px
    k_match: int  # matched filter box, px
    k_background: int  # background (local mean) box, px
    win: int  # centroid window half width, px
    centres: np.ndarray  # (M, 2) planned marker projections (column, row)
    e_u: np.ndarray
    e_v: np.ndarray
    n: np.ndarray


def _box_filter(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k box (k odd), edges padded by reflection; via cumulative sums."""
    r = k // 2
    p = np.pad(a, r + 1, mode="reflect").astype(np.float64)
    c = p.cumsum(0).cumsum(1)
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (s / (k * k))[: a.shape[0], : a.shape[1]]


def _odd(x: float, minimum: int = 3) -> int:
    k = max(minimum, round(x))
    return k if k % 2 else k + 1


class MarkerTracker:
    """Locates implanted markers in stereo kV frames and triangulates the target."""

    def __init__(
        self,
        geometries: Sequence[KvGeometry],
        markers_mm: Sequence[Sequence[float]],
        target_mm: Sequence[float],
        *,
        search_radius_mm: float = 15.0,
        marker_size_mm: float = 1.2,
        min_cnr: float = 8.0,
        max_ray_miss_mm: float = 1.5,
    ) -> None:
        if len(geometries) < 2:
            raise ValueError(f"marker triangulation needs at least 2 kV views, got {len(geometries)}")
        if not markers_mm:
            raise ValueError("marker tracking needs at least one planned marker position")
        if not 1.0 <= search_radius_mm <= 50.0:
            raise ValueError(f"marker search radius {search_radius_mm} mm is outside 1..50 mm")
        if not 0.2 <= marker_size_mm <= 10.0:
            raise ValueError(f"marker size {marker_size_mm} mm is outside 0.2..10 mm")
        self.geometries = tuple(geometries)
        self.markers = np.asarray(markers_mm, dtype=float).reshape(-1, 3)
        self.target = np.asarray(target_mm, dtype=float).reshape(3)
        self.search_radius_mm = search_radius_mm
        self.min_cnr = min_cnr
        self.max_ray_miss_mm = max_ray_miss_mm
        self._views = [self._view_setup(g, marker_size_mm) for g in self.geometries]
        self._check_separation()

    def _view_setup(self, g: KvGeometry, marker_size_mm: float) -> _View:
        px_per_mm_iso = g.magnification / g.pixel_mm
        marker_px = marker_size_mm * px_per_mm_iso
        e_u, e_v, n = g.axes()
        return _View(
            half=math.ceil(self.search_radius_mm * px_per_mm_iso + 2 * marker_px + 2),
            k_match=_odd(marker_px),
            k_background=_odd(5 * marker_px, 9),
            win=max(1, math.ceil(marker_px)),
            centres=g.to_pixel(g.project(self.markers)),  # (M, 2) column, row
            e_u=e_u, e_v=e_v, n=n,
        )

    def _check_separation(self) -> None:
        # Two markers' search regions must not see each other's marker.
        for g, view in zip(self.geometries, self._views):
            c = view.centres
            for a in range(len(c)):
                for b in range(a + 1, len(c)):
                    d = float(np.max(np.abs(c[a] - c[b])))
                    if d < 2.5 * view.half:
                        raise ValueError(
                            f"markers {a} and {b} project {d * g.pixel_mm:.1f} mm apart in the "
                            f"{g.angle_deg:g} deg view; the {self.search_radius_mm} mm search "
                            f"region needs at least {2.5 * view.half * g.pixel_mm:.1f} mm")

    # ------------------------------------------------------------------ API
    def estimate(self, frame: KvFrame) -> TargetEstimate:
        if len(frame.images) != len(self.geometries):
            return TargetEstimate(None, f"frame {frame.frame_id} has {len(frame.images)} images, "
                                        f"expected {len(self.geometries)}")
        for i, (img, g) in enumerate(zip(frame.images, self.geometries)):
            if img.ndim != 2 or img.shape != (g.size_px[1], g.size_px[0]):
                return TargetEstimate(None, f"frame {frame.frame_id} view {i} is {img.shape}, "
                                            f"expected {(g.size_px[1], g.size_px[0])} pixels")
        detections: list[MarkerDetection] = []
        positions = []
        worst_miss = 0.0
        for m in range(len(self.markers)):
            rays = []
            for v in range(len(self.geometries)):
                det = self._detect(frame.images[v], v, m)
                if isinstance(det, str):
                    return TargetEstimate(None, det, detections=tuple(detections))
                detections.append(det)
                rays.append(self._ray(v, det.pixel))
            point, miss = _triangulate(rays)
            if miss > self.max_ray_miss_mm:
                return TargetEstimate(
                    None, f"marker {m}: stereo rays miss each other by {miss:.2f} mm "
                          f"(> {self.max_ray_miss_mm} mm)", detections=tuple(detections))
            worst_miss = max(worst_miss, miss)
            positions.append(point)
        pos = np.asarray(positions)
        target = self.target + (pos - self.markers).mean(axis=0)
        return TargetEstimate(
            target, "", tuple((float(p[0]), float(p[1]), float(p[2])) for p in pos), worst_miss,
            min(d.cnr for d in detections), tuple(detections))

    # ------------------------------------------------------------ internals
    def _detect(self, image: np.ndarray, v: int, m: int) -> MarkerDetection | str:
        view = self._views[v]
        half = view.half
        c0, r0 = (round(float(x)) for x in view.centres[m])
        rows, cols = image.shape
        top, left = max(0, r0 - half), max(0, c0 - half)
        bottom, right = min(rows, r0 + half + 1), min(cols, c0 + half + 1)
        if bottom - top < 8 or right - left < 8:
            return f"marker {m} search region is off the detector in view {v}"
        roi = np.asarray(image[top:bottom, left:right], dtype=np.float64)
        if not np.all(np.isfinite(roi)):
            return f"marker {m}: view {v} has non-finite pixels in the search region"
        hp = roi - _box_filter(roi, view.k_background)
        matched = _box_filter(hp, view.k_match)
        noise = 1.4826 * float(np.median(np.abs(matched - np.median(matched))))
        pr, pc = np.unravel_index(int(np.argmax(matched)), matched.shape)
        peak = float(matched[pr, pc])
        cnr = peak / noise if noise > 0 else (math.inf if peak > 0 else 0.0)
        if not cnr >= self.min_cnr:
            return f"marker {m} not found in view {v} (contrast-to-noise {cnr:.1f} < {self.min_cnr})"
        edge = view.win
        if pr < edge or pc < edge or pr >= hp.shape[0] - edge or pc >= hp.shape[1] - edge:
            return f"marker {m} at the edge of its search region in view {v} (moved too far?)"
        w = edge + 1
        r1, r2 = max(0, pr - w), min(hp.shape[0], pr + w + 1)
        c1, c2 = max(0, pc - w), min(hp.shape[1], pc + w + 1)
        patch = hp[r1:r2, c1:c2]
        weights = np.clip(patch - 0.3 * float(patch.max()), 0.0, None)
        total = float(weights.sum())
        if total <= 0:
            return f"marker {m}: no usable peak in view {v}"
        rr, cc = np.mgrid[r1:r2, c1:c2]
        row = float((weights * rr).sum() / total) + top
        col = float((weights * cc).sum() / total) + left
        return MarkerDetection(v, m, (col, row), cnr)

    def _ray(self, v: int, pixel: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        g = self.geometries[v]
        view = self._views[v]
        e_u, e_v, n = view.e_u, view.e_v, view.n
        u0, v0 = g.origin_uv()
        u = u0 + pixel[0] * g.pixel_mm
        vv = v0 + pixel[1] * g.pixel_mm
        source = g.sad_mm * n
        point = source - g.sid_mm * n + u * e_u + vv * e_v
        d = point - source
        return source, d / np.linalg.norm(d)


def _triangulate(rays: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, float]:
    """Least-squares closest point to all rays, and its largest distance to any ray."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for origin, d in rays:
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ origin
    x = np.linalg.solve(a, b)
    miss = 0.0
    for origin, d in rays:
        off = (x - origin) - d * float(d @ (x - origin))
        miss = max(miss, float(np.linalg.norm(off)))
    return x, 2.0 * miss  # distance between the rays, not from the midpoint
