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

FOV_MM = 220.0
PIXEL_MM = 1.0
TILE_MM = 20.0


def _plane_grid(iso: np.ndarray, plane: str) -> tuple[list[float], list[float], list[float], list[int]]:
    """(origin, spacing, direction, size) of a one-voxel-thick slice image whose rows and
    columns are already in display order (column index -> viewer right, row -> down)."""
    n = round(FOV_MM / PIXEL_MM)
    h = (n - 1) * PIXEL_MM / 2.0
    ex, ey, ez = np.eye(3)
    if plane == "axial":  # columns +x (patient left), rows +y (posterior)
        u, v = ex, ey
    elif plane == "coronal":  # columns +x, rows -z (superior up)
        u, v = ex, -ez
    else:  # sagittal: columns +y (anterior left), rows -z
        u, v = ey, -ez
    w = np.cross(u, v)
    origin = iso - h * u - h * v
    direction = np.stack([u, v, w], axis=1)  # columns are the image axes
    return (
        [float(c) for c in origin], [PIXEL_MM, PIXEL_MM, 1.0],
        [float(c) for c in direction.ravel()], [n, n, 1],
    )


def _slice(img: sitk.Image, iso: np.ndarray, plane: str, tx: sitk.Transform) -> np.ndarray:
    origin, spacing, direction, size = _plane_grid(iso, plane)
    out = sitk.Resample(
        img, size, tx, sitk.sitkLinear, origin, spacing, direction, float("nan"), sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)[0]


def _window(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.where(np.isfinite(out), out, 0.0)


def _intensity_map(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float, float]:
    """(scale, offset, lo, hi): daily value -> planning scale, and the display window.

    The daily image (CBCT) has its own HU scale and offset, so it is mapped
    linearly onto the planning CT's by matching the 10th and 90th percentiles
    over the pixels both images cover (after registration, so the same anatomy
    is compared). One window is then used for both: a wide CT window
    (-600..600 HU: lungs, soft tissue and bone all distinct) when the planning
    image is in HU, else its own 1st..99th percentiles.
    """
    f_all = np.concatenate([f[np.isfinite(f) & np.isfinite(m)] for f, m in pairs])
    m_all = np.concatenate([m[np.isfinite(f) & np.isfinite(m)] for f, m in pairs])
    if f_all.size < 100:
        return 1.0, 0.0, -600.0, 600.0
    f10, f90 = np.percentile(f_all, [10, 90])
    m10, m90 = np.percentile(m_all, [10, 90])
    scale = float((f90 - f10) / (m90 - m10)) if m90 - m10 > 1e-6 else 1.0
    offset = float(f10 - m10 * scale)
    if float(f_all.min()) < -500.0:
        return scale, offset, -600.0, 600.0
    lo, hi = np.percentile(f_all, [1, 99])
    return scale, offset, float(lo), float(hi)


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


def _affine(matrix: np.ndarray) -> sitk.AffineTransform:
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in matrix[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in matrix[:3, 3]])
    return tx


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
    after_tx = identity if m is None else _affine(m)
    n = round(FOV_MM / PIXEL_MM)
    gap, top, label_w = 4, 34, 70
    cols = 4
    sheet = Image.new("RGB", (label_w + cols * (n + gap), top + 3 * (n + gap)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    heads = ["BEFORE fusion", "BEFORE checker", "AFTER fusion", "AFTER checker"]
    for c, text in enumerate(heads):
        draw.text((label_w + c * (n + gap) + 4, top - 14), text, fill=(230, 230, 230))
    draw.text((4, 4), _summary(m, iso_v) + "   (planning magenta, daily green)",
              fill=(255, 255, 120))
    planes = ("axial", "coronal", "sagittal")
    f_sl = {p: _slice(fixed, iso_v, p, identity) for p in planes}
    m_sl = {(p, c): _slice(moving, iso_v, p, tx)
            for p in planes for c, tx in enumerate((identity, after_tx))}
    scale, offset, lo, hi = _intensity_map([(f_sl[p], m_sl[(p, 1)]) for p in planes])
    for r, plane in enumerate(planes):
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
