"""Review PNGs drawn with Pillow only (no plotting library).

* `trajectory_png`: 4D target displacement per phase (one line per daily
  axis) with the time-weighted mean of each as a dashed line.
* `deviation_png`: deviation versus time with a tolerance line and shaded
  beam-hold intervals (intrafraction monitoring).
* `kv_overlay_png`: DRR versus kV colour fusion for each view, before (no
  correction) and after (the registration); DRR magenta, kV green, so
  agreement is grey and misalignment shows coloured fringes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

W, H = 720, 420
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 20, 30, 44
COLOURS = [(214, 39, 40), (44, 160, 44), (31, 119, 180), (148, 103, 189)]


class _Axes:
    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int],
                 xr: tuple[float, float], yr: tuple[float, float]) -> None:
        self.d, self.box = draw, box
        x0, x1 = xr
        y0, y1 = yr
        self.xr = (x0, x1 if x1 > x0 else x0 + 1.0)
        self.yr = (y0, y1 if y1 > y0 else y0 + 1.0)

    def xy(self, x: float, y: float) -> tuple[float, float]:
        l, t, r, b = self.box
        fx = (x - self.xr[0]) / (self.xr[1] - self.xr[0])
        fy = (y - self.yr[0]) / (self.yr[1] - self.yr[0])
        return l + fx * (r - l), b - fy * (b - t)

    def frame(self, xlabel: str, ylabel: str, title: str) -> None:
        l, t, r, b = self.box
        self.d.rectangle(self.box, outline=(0, 0, 0))
        for k in range(5):
            y = self.yr[0] + k * (self.yr[1] - self.yr[0]) / 4
            _, py = self.xy(self.xr[0], y)
            self.d.line([(l - 4, py), (l, py)], fill=(0, 0, 0))
            self.d.text((4, py - 6), f"{y:7.2f}", fill=(0, 0, 0))
            x = self.xr[0] + k * (self.xr[1] - self.xr[0]) / 4
            px, _ = self.xy(x, self.yr[0])
            self.d.line([(px, b), (px, b + 4)], fill=(0, 0, 0))
            self.d.text((px - 12, b + 6), f"{x:.1f}", fill=(0, 0, 0))
        self.d.text(((l + r) / 2 - 30, b + 24), xlabel, fill=(0, 0, 0))
        self.d.text((4, t - 22), ylabel, fill=(0, 0, 0))
        self.d.text(((l + r) / 2 - 60, 6), title, fill=(0, 0, 0))

    def polyline(self, xs: Sequence[float], ys: Sequence[float], colour: tuple[int, int, int],
                 dashed: bool = False) -> None:
        pts = [self.xy(x, y) for x, y in zip(xs, ys)]
        if dashed:
            for a, b in itertools.pairwise(pts):
                n = max(1, int(np.hypot(b[0] - a[0], b[1] - a[1]) // 8))
                for k in range(0, n, 2):
                    p0 = (a[0] + (b[0] - a[0]) * k / n, a[1] + (b[1] - a[1]) * k / n)
                    p1 = (a[0] + (b[0] - a[0]) * (k + 1) / n, a[1] + (b[1] - a[1]) * (k + 1) / n)
                    self.d.line([p0, p1], fill=colour, width=2)
        elif len(pts) > 1:
            self.d.line(pts, fill=colour, width=2)
        for p in pts if (not dashed and len(pts) <= 40) else []:
            self.d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)


def _range(values: np.ndarray, pad: float = 0.1) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    span = max(hi - lo, 1.0)
    return lo - pad * span, hi + pad * span


def trajectory_png(result: Any, path: str | Path) -> None:
    """Per-phase displacement (daily x, y, z) of an imaging.fourd.FourDResult."""
    phases = [p.phase for p in result.phases]
    disp = np.array([p.displacement_mm for p in result.phases])
    mean = np.asarray(result.mean_displacement_mm)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    ax = _Axes(d, (MARGIN_L, MARGIN_T, W - MARGIN_R - 90, H - MARGIN_B),
               (min(phases), max(phases)), _range(np.concatenate([disp.ravel(), mean])))
    ax.frame("phase", "displacement mm", "4D target trajectory (dashed: time-weighted mean)")
    for k, name in enumerate("xyz"):
        ax.polyline(phases, [float(v) for v in disp[:, k]], COLOURS[k])
        ax.polyline([min(phases), max(phases)], [mean[k], mean[k]], COLOURS[k], dashed=True)
        d.text((W - MARGIN_R - 80, MARGIN_T + 16 * k), f"{name}: amp {result.amplitude_mm[k]:.1f}",
               fill=COLOURS[k])
    img.save(str(path))


def deviation_png(
    times_s: Sequence[float],
    deviation_mm: Sequence[float],
    tolerance_mm: float,
    hold_intervals_s: Sequence[tuple[float, float]],
    path: str | Path,
    title: str = "target deviation during beam-on (shaded: beam held)",
) -> None:
    t = np.asarray(times_s, dtype=float)
    dev = np.asarray(deviation_mm, dtype=float)
    if t.size == 0:
        raise ValueError("no samples to plot")
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    yr = _range(np.concatenate([dev, [0.0, tolerance_mm]]))
    ax = _Axes(d, (MARGIN_L, MARGIN_T, W - MARGIN_R, H - MARGIN_B), (float(t.min()), float(t.max())), yr)
    for a, b in hold_intervals_s:
        x0, y0 = ax.xy(max(a, float(t.min())), yr[1])
        x1, y1 = ax.xy(min(b, float(t.max())), yr[0])
        if x1 > x0:
            d.rectangle([x0, y0, x1, y1], fill=(255, 220, 200))
    ax.frame("time s", "deviation mm", title)
    ax.polyline([float(t.min()), float(t.max())], [tolerance_mm, tolerance_mm], (214, 39, 40),
                dashed=True)
    ax.polyline(list(t), list(dev), (31, 119, 180))
    img.save(str(path))


def _fuse(drr_img: np.ndarray, kv: np.ndarray) -> np.ndarray:
    def norm(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)

    a, b = norm(drr_img), norm(kv)
    rgb = np.stack([a, b, a], axis=-1)
    # rows run along +v (room +Y, towards the gantry): draw +Y up
    return (rgb[::-1] * 255).astype(np.uint8)


def kv_overlay_png(
    plan_ct: Any, views: Sequence[Any], matrix: np.ndarray, iso: Sequence[float],
    patient_position: str, path: str | Path, size: int = 256,
) -> None:
    """One row per kV view: DRR/kV fusion before (identity) and after (matrix)."""
    from imaging.drr import AttenuationVolume, detector_grid, drr, resample_grid

    vol = AttenuationVolume.from_ct(plan_ct)
    iso3 = (float(iso[0]), float(iso[1]), float(iso[2]))
    tiles = []
    for v in views:
        g_small = v.geometry.resized((size, size))
        kv = resample_grid(v.image, detector_grid(v.geometry), detector_grid(g_small))
        row = []
        for m in (np.eye(4), np.asarray(matrix, dtype=float)):
            dr = drr(vol, g_small, m, iso3, patient_position)
            row.append(_fuse(dr, kv))  # line integrals: bone bright, lung dark
        tiles.append(np.concatenate(row, axis=1))
    img = Image.fromarray(np.concatenate(tiles, axis=0), "RGB")
    d = ImageDraw.Draw(img)
    for k, v in enumerate(views):
        d.text((4, k * size + 4), f"{v.geometry.angle_deg:g} deg before", fill=(255, 255, 0))
        d.text((size + 4, k * size + 4), "after", fill=(255, 255, 0))
    img.save(str(path))
