"""Review overlays a therapist uses to accept a match (Pillow, no matplotlib).

One PNG: the three orthogonal planes through the isocentre (rows: axial,
coronal, sagittal), each shown before the correction (daily image as
acquired, identity) and after it (daily image resampled through the
registration), as a colour fusion (planning CT magenta, daily image green:
aligned anatomy turns grey, misalignment shows coloured fringes) and as a
checkerboard (edges must run straight across the tile borders).

Display conventions are the radiological ones: axial viewed from the feet
(patient right on the viewer's left, anterior up), coronal from the front,
sagittal from the patient's left (anterior on the viewer's left).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

# The planes, their sampling and the intensity mapping are shared with the browser
# console's review images, so both show the same thing.
from imaging.review_planes import (
    PIXEL_MM,
    PLANES,
    affine,
    intensity_map,
    plane_size,
    slice_plane,
)

TILE_MM = 20.0


def _window(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.where(np.isfinite(out), out, 0.0)


def _fusion(f: np.ndarray, m: np.ndarray) -> np.ndarray:
    rgb = np.stack([f, m, f], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _checker(f: np.ndarray, m: np.ndarray) -> np.ndarray:
    t = max(1, round(TILE_MM / PIXEL_MM))
    yy, xx = np.indices(f.shape)
    use_m = ((yy // t) + (xx // t)) % 2 == 1
    g = np.where(use_m, m, f)
    return (np.stack([g, g, g], axis=-1) * 255).astype(np.uint8)


def _mark_iso(img: Image.Image) -> None:
    d = ImageDraw.Draw(img)
    cx, cy = img.width // 2, img.height // 2
    d.line([(cx - 6, cy), (cx - 2, cy)], fill=(255, 255, 0))
    d.line([(cx + 2, cy), (cx + 6, cy)], fill=(255, 255, 0))
    d.line([(cx, cy - 6), (cx, cy - 2)], fill=(255, 255, 0))
    d.line([(cx, cy + 2), (cx, cy + 6)], fill=(255, 255, 0))


def _summary(matrix: np.ndarray | None, iso: np.ndarray) -> str:
    if matrix is None:
        return "no registration: before only"
    shift = matrix[:3, :3] @ iso + matrix[:3, 3] - iso
    r = matrix[:3, :3]
    rx = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    ry = math.degrees(-math.asin(max(-1.0, min(1.0, float(r[2, 0])))))
    rz = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return (f"shift at iso x {shift[0]:+.1f} y {shift[1]:+.1f} z {shift[2]:+.1f} mm   "
            f"rot x {rx:+.2f} y {ry:+.2f} z {rz:+.2f} deg")


def write_overlay_png(
    fixed: sitk.Image,
    moving: sitk.Image,
    matrix: np.ndarray | Sequence[Sequence[float]] | None,
    iso: Sequence[float],
    path: str | Path,
) -> Path:
    """Write the before/after review overlay; returns the path written.

    `matrix` is the ITK fixed->moving registration (None: only "before" is shown,
    twice, so a failed registration can still be reviewed).
    """
    iso_v = np.asarray(iso, dtype=float)
    if iso_v.shape != (3,) or not np.all(np.isfinite(iso_v)):
        raise ValueError(f"isocentre must be 3 finite numbers in mm, got {iso!r}")
    m = None if matrix is None else np.asarray(matrix, dtype=float)
    if m is not None and m.shape != (4, 4):
        raise ValueError(f"registration matrix must be 4x4, got shape {m.shape}")
    identity = sitk.Transform(3, sitk.sitkIdentity)
    after_tx = identity if m is None else affine(m)
    n = plane_size()
    gap, top, label_w = 4, 34, 70
    cols = 4
    sheet = Image.new("RGB", (label_w + cols * (n + gap), top + 3 * (n + gap)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    heads = ["BEFORE fusion", "BEFORE checker", "AFTER fusion", "AFTER checker"]
    for c, text in enumerate(heads):
        draw.text((label_w + c * (n + gap) + 4, top - 14), text, fill=(230, 230, 230))
    draw.text((4, 4), _summary(m, iso_v) + "   (planning magenta, daily green)",
              fill=(255, 255, 120))
    f_sl = {p: slice_plane(fixed, iso_v, p, identity) for p in PLANES}
    m_sl = {(p, c): slice_plane(moving, iso_v, p, tx)
            for p in PLANES for c, tx in enumerate((identity, after_tx))}
    scale, offset, lo, hi = intensity_map([(f_sl[p], m_sl[(p, 1)]) for p in PLANES])
    for r, plane in enumerate(PLANES):
        y0 = top + r * (n + gap)
        draw.text((4, y0 + n // 2 - 6), plane, fill=(230, 230, 230))
        f = _window(f_sl[plane], lo, hi)
        for c in (0, 1):
            mv = _window(m_sl[(plane, c)] * scale + offset, lo, hi)
            for k, panel in enumerate((_fusion(f, mv), _checker(f, mv))):
                tile = Image.fromarray(panel, "RGB")
                _mark_iso(tile)
                sheet.paste(tile, (label_w + (2 * c + k) * (n + gap), y0))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
