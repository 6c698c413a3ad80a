"""Masks of what the registration must not look at: the couch table-top and the air away
from the patient in the planning CT, and the padding outside the daily CBCT's
reconstructed field of view."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imaging.registration_settings import RegistrationSettings


def _without_thin_dense_sheets(roi: sitk.Image, s: RegistrationSettings) -> sitk.Image:
    """Mask (1 = sample) of the planning ROI: the patient and a thin band of air around
    it, without dense sheets that touch air (the couch table-top) and their surround.

    The couch table-top (two thin dense skins around a foam core) is fixed to the
    couch: with the patient displaced on it, it is elsewhere relative to the anatomy
    in the daily image, and its 1200 HU edges outweigh soft tissue (a pre-sacral
    target 50 mm above the table top registered 5-9 mm off with the table in both
    images, 0.04 mm with it in neither). Morphology alone cannot separate a flat
    patient lying on a flat table; density can: bone-dense voxels within
    `exclude_thin_sheets_mm` of air are the table's skins (bone inside the patient is
    wrapped in soft tissue). Air further than `body_band_mm` from the patient is not
    sampled either: it is flat in the plan but holds the couch on the day.
    """
    zyx = roi.GetSpacing()[::-1]
    r = [max(1, round(s.exclude_thin_sheets_mm / sp)) for sp in zyx]
    hu = sitk.GetArrayViewFromImage(roi)
    air = hu < s.body_threshold_hu
    sheet = (hu >= s.sheet_min_hu) & _dilate(air, r)
    exclude = _dilate(sheet, [2 * v for v in r])
    keep = ~air & ~exclude
    if s.body_band_mm > 0:
        keep = _dilate(keep, [max(1, round(s.body_band_mm / sp)) for sp in zyx]) & ~exclude
    out = sitk.GetImageFromArray(keep.astype(np.uint8))
    out.CopyInformation(roi)
    return out


def _dilate(mask: np.ndarray, radius: list[int]) -> np.ndarray:
    """Binary dilation by a box of +-radius voxels per numpy axis: shifted ORs, a few
    ms on a region of interest where ITK's ball dilation took ~25 ms."""
    out = mask.copy()
    for axis, rad in enumerate(radius):
        src = out.copy()
        n = out.shape[axis]
        for k in range(1, min(rad, n - 1) + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - k), slice(k, n)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def _on_grid(mask: sitk.Image, grid: sitk.Image) -> sitk.Image:
    return sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 1, sitk.sitkUInt8)


def _padding_value(img: sitk.Image) -> float | None:
    """The value a reconstruction writes outside its field of view, if it has one.

    A CBCT reconstructs a cylinder about the gantry axis and fills the rest of the
    box with one constant; the corners of the box are always outside the cylinder.
    If all eight corner voxels hold the same value, voxels holding exactly that value
    are taken as outside the field of view. (A noise-free image with exact air in
    its corners loses only samples touching that air; a real image has noisy air.)
    """
    size = img.GetSize()
    values = {float(img.GetPixel([0 if b == 0 else n - 1 for b, n in zip(bits, size)]))
              for bits in np.ndindex(2, 2, 2)}
    return values.pop() if len(values) == 1 else None


def _field_of_view_mask(crop: sitk.Image, lvl: sitk.Image, padding: float,
                        spacing: float) -> sitk.Image:
    """Moving mask for a resampled level: 1 where the level voxel lies well inside the
    reconstructed field of view. Decided on every n-th voxel of the crop (a strided
    view, a few ms) and eroded by one such voxel, instead of averaging a full-size
    validity image (~20 ms of a 4-million-voxel crop)."""
    factors = [max(1, round(spacing / sp)) for sp in crop.GetSpacing()] if spacing > 0 else [1, 1, 1]
    sub = crop[::factors[0], ::factors[1], ::factors[2]] if max(factors) > 1 else crop
    valid = sitk.BinaryErode(sitk.NotEqual(sub, padding), [1, 1, 1])
    return sitk.Resample(valid, lvl, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

