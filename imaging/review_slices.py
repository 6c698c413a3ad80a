"""Review images for the browser console: the planes a therapist looks at to accept
a registration, as numbers the page colours itself (docs/console-api.md,
"Review images").

For each of the three planes through the isocentre (axial, coronal, sagittal):
the planning CT (`fixed`), the daily image as acquired (`moving_before`,
identity) and the daily image through the registration (`moving_after`). Same
planes, same orientation and the same mapping of the daily image onto the
planning CT's scale as the PNG overlay (imaging/overlay.py, both through
imaging/review_planes.py), so the page and the PNG agree.

Pure computation (numpy and SimpleITK, no I/O). It runs in igrtd's registration
worker, where the images are already loaded; `encode_review` turns the result
into the MQTT messages there too, so igrtd's event loop only sends bytes.

These are display data, nothing more: rounded to whole HU, clipped, sampled
on a 1 mm grid by linear interpolation. No dose, no correction and no
decision is computed from them; the registration result is the matrix.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from imaging.review_messages import (
    IMAGES,
    NO_DATA,
    PLANES,
    ReviewImage,
    ReviewMessages,
    ReviewRequest,
)
from imaging.review_planes import PIXEL_MM, affine, intensity_map, plane_size, slice_plane

# Real values are clipped to one above NO_DATA, so "no data" is never a value a
# very dense voxel was clipped to.
_LOWEST = NO_DATA + 1
_HIGHEST = 32767


@dataclass(frozen=True)
class ReviewSlices:
    """The nine review images of one registration and how to show them."""

    # (plane, image) -> rows x cols int16 HU on the planning CT's scale, NO_DATA
    # outside the image. Row 0 at the top, column 0 at the left.
    images: Mapping[tuple[str, str], np.ndarray]
    matrix: tuple[tuple[float, ...], ...]  # the 4x4 fixed -> moving registration
    iso_mm: tuple[float, float, float]  # where the planes cross: pixel ((n-1)/2, (n-1)/2)
    window_centre: float  # suggested display window, HU
    window_width: float
    rows: int
    cols: int
    pixel_mm: float


def _display_hu(a: np.ndarray) -> np.ndarray:
    """Float HU -> int16: whole HU, clipped to the int16 range (display data only),
    NO_DATA where nothing was sampled (NaN: the plane left the image)."""
    finite = np.isfinite(a)
    out = np.full(a.shape, NO_DATA, dtype=np.int16)
    out[finite] = np.clip(np.rint(a[finite]), _LOWEST, _HIGHEST).astype(np.int16)
    return out


def review_slices(fixed: sitk.Image, moving: sitk.Image,
                  matrix: np.ndarray | Sequence[Sequence[float]],
                  iso: Sequence[float]) -> ReviewSlices:
    """The review images of the registration `matrix` (ITK fixed -> moving, as
    `imaging.registration.register_rigid` returns it) of `moving` to `fixed`,
    on the planes through `iso` (mm, the fixed image's frame)."""
    iso_v = np.asarray(iso, dtype=float)
    if iso_v.shape != (3,) or not np.all(np.isfinite(iso_v)):
        raise ValueError(f"isocentre must be 3 finite numbers in mm, got {iso!r}")
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"registration matrix must be 4x4 finite numbers, got shape {m.shape}")
    identity = sitk.Transform(3, sitk.sitkIdentity)
    after_tx = affine(m)
    f_sl = {p: slice_plane(fixed, iso_v, p, identity) for p in PLANES}
    before = {p: slice_plane(moving, iso_v, p, identity) for p in PLANES}
    after = {p: slice_plane(moving, iso_v, p, after_tx) for p in PLANES}
    # Matched after the registration, as the overlay does: the same anatomy compared.
    scale, offset, lo, hi = intensity_map([(f_sl[p], after[p]) for p in PLANES])
    images: dict[tuple[str, str], np.ndarray] = {}
    for p in PLANES:
        images[(p, "fixed")] = _display_hu(f_sl[p])
        images[(p, "moving_before")] = _display_hu(before[p] * scale + offset)
        images[(p, "moving_after")] = _display_hu(after[p] * scale + offset)
    n = plane_size()
    return ReviewSlices(
        images=images,
        matrix=tuple(tuple(float(v) for v in row) for row in m),
        iso_mm=(float(iso_v[0]), float(iso_v[1]), float(iso_v[2])),
        window_centre=(lo + hi) / 2.0, window_width=max(hi - lo, 1.0),
        rows=n, cols=n, pixel_mm=PIXEL_MM)


def _json(obj: object) -> bytes:
    # Compact: every byte of the nine ~130 KB messages crosses the broker to every page.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def encode_review(review: ReviewSlices, request: ReviewRequest, ts: float) -> ReviewMessages:
    """The MQTT messages of `review`: meta, and one per plane and image (int16
    little-endian, row-major, base64). Their shapes are ReviewMetaMessage and
    ReviewImageMessage of daemon/console/schemas.py (a test holds them to it)."""
    meta = {
        "v": 1, "room": request.room, "ts": ts, "registration_id": request.registration_id,
        "matrix": [list(row) for row in review.matrix], "iso_mm": list(review.iso_mm),
        "fixed": request.fixed_label, "moving": request.moving_label,
        "planes": list(PLANES), "images": list(IMAGES),
        "rows": review.rows, "cols": review.cols, "pixel_mm": review.pixel_mm,
        "window": {"centre": review.window_centre, "width": review.window_width},
        "no_data": NO_DATA,
    }
    out = []
    for plane in PLANES:
        for image in IMAGES:
            a = review.images[(plane, image)]
            if a.shape != (review.rows, review.cols):
                raise ValueError(f"{plane} {image} is {a.shape}, not "
                                 f"{(review.rows, review.cols)}")
            data = np.ascontiguousarray(a, dtype="<i2").tobytes()
            out.append(ReviewImage(plane, image, _json({
                "v": 1, "room": request.room, "registration_id": request.registration_id,
                "plane": plane, "image": image, "rows": review.rows, "cols": review.cols,
                "pixel_mm": review.pixel_mm, "dtype": "int16le",
                "data": base64.b64encode(data).decode("ascii"),
            })))
    return ReviewMessages(request.registration_id, _json(meta), tuple(out))
