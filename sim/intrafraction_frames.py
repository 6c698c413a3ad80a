"""Synthetic stereo kV frames of a moving gold marker, and the tracker that reads them.

`KvFrameRenderer` is fast enough for 10-20 Hz in real time: a static
soft-tissue body (water chord through an elliptic cylinder), bony texture
(spine, ribs, coarse random structure), a bright gold marker projected with the
cone-beam geometry of imaging.drr.KvGeometry, and quantum noise on the
transmitted intensity (Gaussian approximation, per-pixel sigma from the
background attenuation). The anatomy is static; only the marker moves (that is
all the tracker looks at). Part of sim/intrafraction.py's split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from imaging.drr import MU_WATER_PER_MM, KvGeometry
from imaging.tracking import MarkerTracker

#: A stereo pair as mounted on many linacs (kV sources 90 deg apart).
MONITOR_PAIR: tuple[KvGeometry, KvGeometry] = (KvGeometry(angle_deg=0.0),
                                               KvGeometry(angle_deg=90.0))
#: Smaller detectors for campaigns that render thousands of frames.
COMPACT_PAIR: tuple[KvGeometry, KvGeometry] = (
    KvGeometry(angle_deg=0.0, size_px=(128, 128), pixel_mm=1.2),
    KvGeometry(angle_deg=90.0, size_px=(128, 128), pixel_mm=1.2),
)
TARGET_MM: tuple[float, float, float] = (0.0, 0.0, 0.0)  # planned target at the isocentre
MARKERS_MM: tuple[tuple[float, float, float], ...] = ((6.0, -4.0, 5.0),)


def _box_blur(a: np.ndarray, k: int) -> np.ndarray:
    r = k // 2
    p = np.pad(a, r + 1, mode="reflect")
    c = p.cumsum(0).cumsum(1)
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (s / (k * k))[: a.shape[0], : a.shape[1]]


class KvFrameRenderer:
    """Synthetic kV frames: static anatomy + moving gold marker(s) + quantum noise."""

    def __init__(
        self,
        geometries: Sequence[KvGeometry],
        markers_mm: Sequence[Sequence[float]],
        seed: int = 0,
        *,
        photons_per_mm2: float = 5.5e4,  # unattenuated fluence at the detector
        marker_peak: float = 2.0,  # line integral at the marker centre after blur
        marker_size_mm: float = 1.2,
        body_semi_axes_mm: tuple[float, float] = (150.0, 100.0),  # room X, Z
    ) -> None:
        self.geometries = tuple(geometries)
        self.markers = np.asarray(markers_mm, dtype=float).reshape(-1, 3)
        self.rng = np.random.default_rng(seed)
        self.marker_peak = marker_peak
        self.marker_size_mm = marker_size_mm
        self.backgrounds: list[np.ndarray] = []
        self.sigmas: list[np.ndarray] = []
        for g in self.geometries:
            photons_per_pixel = photons_per_mm2 * g.pixel_mm**2
            bg = self._anatomy(g, body_semi_axes_mm)
            self.backgrounds.append(bg.astype(np.float32))
            self.sigmas.append((1.0 / np.sqrt(photons_per_pixel * np.exp(-bg))).astype(np.float32))

    def _anatomy(self, g: KvGeometry, semi: tuple[float, float]) -> np.ndarray:
        nu, nv = g.size_px
        u0, v0 = g.origin_uv()
        u = u0 + np.arange(nu) * g.pixel_mm
        v = v0 + np.arange(nv) * g.pixel_mm
        s = u / g.magnification  # lateral position at the isocentre plane
        y = v / g.magnification
        a = math.radians(g.angle_deg)
        n = np.array([math.sin(a), math.cos(a)])  # beam direction in (X, Z)
        e = np.array([math.cos(a), -math.sin(a)])
        # Chord of the ray s*e + l*n through the ellipse x^2/A^2 + z^2/B^2 = 1.
        ax, bz = semi
        qa = n[0] ** 2 / ax**2 + n[1] ** 2 / bz**2
        qb = 2 * s * (e[0] * n[0] / ax**2 + e[1] * n[1] / bz**2)
        qc = s**2 * (e[0] ** 2 / ax**2 + e[1] ** 2 / bz**2) - 1
        disc = np.clip(qb**2 - 4 * qa * qc, 0.0, None)
        chord = np.sqrt(disc) / qa
        body = MU_WATER_PER_MM * chord[None, :] * np.ones((nv, 1))
        ss, yy = np.meshgrid(s, y)
        # Spine: a dense band along Y behind the target, with vertebral bodies.
        spine = 0.9 * np.exp(-((ss - 0.0) / 18.0) ** 4) * (0.7 + 0.3 * np.cos(2 * np.pi * yy / 32.0))
        # Ribs: thin stripes along X, only off the midline.
        ribs = 0.35 * (np.cos(2 * np.pi * (yy + 0.3 * np.abs(ss)) / 26.0) > 0.8) * (
            np.abs(ss) > 35) * (np.abs(ss) < 150)
        ribs = _box_blur(ribs.astype(float), 5)
        # Coarse structure (vessels, bowel gas...): smoothed random field.
        coarse = _box_blur(self.rng.standard_normal((nv, nu)), max(3, int(8 / g.pixel_mm) | 1))
        coarse = _box_blur(coarse, max(3, int(8 / g.pixel_mm) | 1)) * 0.4
        return body + spine + ribs + coarse * (chord[None, :] > 0)

    def render(self, displacement_mm: Sequence[float] | np.ndarray, marker_visible: bool = True,
               transform: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """One frame per view. The markers are moved by `transform` (a 4x4 room-frame map:
        the patient turned, or carried by the couch), then by `displacement_mm`."""
        d = np.asarray(displacement_mm, dtype=float).reshape(3)
        markers = self.markers
        if transform is not None:
            h = np.asarray(transform, dtype=float)
            markers = markers @ h[:3, :3].T + h[:3, 3]
        out = []
        for g, bg, sig in zip(self.geometries, self.backgrounds, self.sigmas):
            img = bg + self.rng.standard_normal(bg.shape, dtype=np.float32) * sig
            if marker_visible:
                for m in markers:
                    self._draw_marker(img, g, m + d)
            out.append(img)
        return tuple(out)

    def _draw_marker(self, img: np.ndarray, g: KvGeometry, p: np.ndarray) -> None:
        uv = g.project(p[None, :])
        col, row = g.to_pixel(uv)[0]
        mag = g.sid_mm / (g.sad_mm - float(p @ g.axes()[2]))
        sigma = max(0.6, 0.5 * self.marker_size_mm * mag / g.pixel_mm)
        r = math.ceil(4 * sigma) + 1
        c0, r0 = round(float(col)), round(float(row))
        rows, cols = img.shape
        r1, r2 = max(0, r0 - r), min(rows, r0 + r + 1)
        c1, c2 = max(0, c0 - r), min(cols, c0 + r + 1)
        if r1 >= r2 or c1 >= c2:
            return
        rr, cc = np.mgrid[r1:r2, c1:c2]
        blob = self.marker_peak * np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma**2))
        img[r1:r2, c1:c2] += blob.astype(np.float32)


def make_tracker(geometries: Sequence[KvGeometry] = MONITOR_PAIR,
                 markers_mm: Sequence[Sequence[float]] = MARKERS_MM,
                 target_mm: Sequence[float] = TARGET_MM, **kw: Any) -> MarkerTracker:
    return MarkerTracker(geometries, markers_mm, target_mm, **kw)
