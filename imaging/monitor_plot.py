"""Deviation-versus-time plot with beam-hold intervals (PNG, Pillow only).

Drawn by hand with ImageDraw so the demo needs no plotting library: the
estimated target deviation (dots joined by a line, gaps where there was no
estimate), optionally the true deviation, the tolerance as a dashed line and
the beam-hold intervals shaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

_W, _H = 1000, 420
_L, _R, _T, _B = 70, 20, 40, 50  # margins: left, right, top, bottom


def deviation_plot(
    path: Path | str,
    times_s: Sequence[float],
    deviation_mm: Sequence[float | None],
    tolerance_mm: float,
    hold_intervals_s: Sequence[tuple[float, float]],
    *,
    truth: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str = "Target deviation during beam-on",
) -> Path:
    """Write the plot to `path` and return it. None deviations are drawn as gaps."""
    path = Path(path)
    img = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(img)
    t_all = list(times_s) + (list(truth[0]) if truth else [])
    d_all = [d for d in deviation_mm if d is not None] + (list(truth[1]) if truth else [])
    t_max = max(t_all, default=1.0) or 1.0
    d_max = max([tolerance_mm * 1.5, *d_all])
    d_max = math.ceil(d_max)

    def xy(t: float, d: float) -> tuple[float, float]:
        x = _L + (_W - _L - _R) * t / t_max
        y = _H - _B - (_H - _T - _B) * min(d, d_max) / d_max
        return x, y

    for a, b in hold_intervals_s:
        x1, _ = xy(a, 0)
        x2, _ = xy(min(b, t_max), 0)
        draw.rectangle([x1, _T, x2, _H - _B], fill=(255, 215, 215))
    # axes and grid
    draw.line([(_L, _T), (_L, _H - _B), (_W - _R, _H - _B)], fill="black")
    for k in range(int(d_max) + 1):
        _, y = xy(0, k)
        draw.line([(_L - 4, y), (_L, y)], fill="black")
        draw.text((_L - 30, y - 6), f"{k}", fill="black")
    step = max(1, int(t_max // 10))
    for k in range(0, int(t_max) + 1, step):
        x, _ = xy(k, 0)
        draw.line([(x, _H - _B), (x, _H - _B + 4)], fill="black")
        draw.text((x - 4, _H - _B + 8), f"{k}", fill="black")
    draw.text((_W // 2 - 40, _H - 20), "time since beam on (s)", fill="black")
    draw.text((8, _T - 25), "deviation (mm)", fill="black")
    draw.text((_W // 2 - 120, 8), title, fill="black")
    # tolerance, dashed
    _, yt = xy(0, tolerance_mm)
    x = float(_L)
    while x < _W - _R:
        draw.line([(x, yt), (min(x + 8, _W - _R), yt)], fill=(200, 0, 0), width=2)
        x += 14
    draw.text((_W - _R - 130, yt - 16), f"tolerance {tolerance_mm:g} mm", fill=(200, 0, 0))
    if truth is not None:
        pts = [xy(t, d) for t, d in zip(truth[0], truth[1])]
        if len(pts) > 1:
            draw.line(pts, fill=(150, 150, 150), width=1)
    segment: list[tuple[float, float]] = []
    for t, d in list(zip(times_s, deviation_mm)) + [(0.0, None)]:
        if d is None:
            if len(segment) > 1:
                draw.line(segment, fill=(0, 70, 200), width=2)
            segment = []
            continue
        segment.append(xy(t, d))
    for t, d in zip(times_s, deviation_mm):
        if d is not None:
            x0, y0 = xy(t, d)
            draw.ellipse([x0 - 2, y0 - 2, x0 + 2, y0 + 2], fill=(0, 70, 200))
    # legend
    lx, ly = _L + 10, _T + 5
    draw.rectangle([lx, ly, lx + 14, ly + 10], fill=(255, 215, 215))
    draw.text((lx + 20, ly - 2), "beam held (PLC coil)", fill="black")
    draw.line([(lx + 180, ly + 5), (lx + 200, ly + 5)], fill=(0, 70, 200), width=2)
    draw.text((lx + 205, ly - 2), "estimated", fill="black")
    if truth is not None:
        draw.line([(lx + 290, ly + 5), (lx + 310, ly + 5)], fill=(150, 150, 150))
        draw.text((lx + 315, ly - 2), "true", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
