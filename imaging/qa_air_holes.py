"""Finding an air hole (a small dark sphere) of the QA phantom in a CBCT.

`find_air_hole(image, expected_mm, radius_mm)` returns the hole's centre in the image's
physical frame (DICOM LPS, mm) to a fraction of a voxel, or refuses with a one-line
ValueError when the search sphere holds no such hole or more than one. igrtd's daily QA
finds the phantom's three air holes next to its BB (imaging.qa_bb) so that a rigid fit
of four fiducials measures the couch's motion, rotations included.

Unlike the BB, a hole is found without a top-hat: by a threshold halfway between the
phantom's material and the darkest voxel of the search sphere, then a centroid of the
darkness (see `find_air_hole` for the steps).

Pure computation on an image already read: no file or device access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsFloat

import numpy as np
import SimpleITK as sitk

from imaging.qa_markers import (
    CENTROID_ITERATIONS,
    check_inputs,
    crop_to_search,
    finite_number,
    fmt_mm,
    index_to_physical,
    local_box,
    physical_to_index,
    smooth,
    squared_distance_mm2,
    voxels_of,
)

__all__ = ["AirHoleFound", "find_air_hole"]

# An air hole must read at least this far below the material around it (HU).
DEFAULT_HOLE_MIN_CONTRAST_HU = 500.0
# A dark object is hole-like when its volume below the mid threshold is within these
# fractions of the expected sphere's.
HOLE_VOLUME_RANGE = (0.3, 3.0)


@dataclass(frozen=True)
class AirHoleFound:
    """A dark sphere (an air hole of the QA phantom) found by `find_air_hole`."""

    position_mm: tuple[float, float, float]  # image physical frame (DICOM LPS)
    voxels: int  # voxels that weighed in the centroid
    background_hu: float  # median of the shell around it (the phantom's material)
    air_hu: float  # median of its core (below the mid threshold)
    volume_mm3: float  # volume below the mid threshold

    def to_json_dict(self) -> dict[str, object]:
        return {
            "position_mm": [float(v) for v in self.position_mm],
            "voxels": int(self.voxels),
            "background_hu": float(self.background_hu),
            "air_hu": float(self.air_hu),
            "volume_mm3": float(self.volume_mm3),
        }


def find_air_hole(
    image: sitk.Image,
    expected_mm: Sequence[float],
    radius_mm: float,
    search_radius_mm: float = 10.0,
    *,
    min_contrast_hu: float = DEFAULT_HOLE_MIN_CONTRAST_HU,
) -> AirHoleFound:
    """The one air hole (a dark sphere of about `radius_mm`) within `search_radius_mm`
    of `expected_mm` (image physical frame, mm), to a fraction of a voxel.

    Detection: on a lightly smoothed crop, the connected regions darker than the
    threshold halfway between the material (the crop's median) and the darkest voxel
    in the search sphere; a region is hole-like when it is whole (not cut by the crop's
    edge: the air outside the phantom is) and its volume is within HOLE_VOLUME_RANGE of
    the sphere's. Position, on the unsmoothed image: a soft-thresholded weighted
    centroid of the darkness, weights clip(bg - tau - HU, 0, bg - tau - air) within
    radius + 2.5 mm of the current centre (bg the median of a shell around the hole,
    tau 3 sd of its noise), iterated: the weights are a voxel's air fraction, so the
    centroid is the sphere's centre whatever the slice thickness (no sampling bias of a
    bright-spot centroid: the hole spans several slices).

    ValueError (one line) when there is none, or more than one."""
    if expected_mm is None:
        raise ValueError("find_air_hole needs expected_mm (x, y, z mm)")
    expected, radius, min_contrast, _ = check_inputs(
        image, expected_mm, search_radius_mm, min_contrast_hu, 1.0)
    if expected is None:  # pragma: no cover - given above
        raise ValueError("find_air_hole needs expected_mm (x, y, z mm)")
    r_hole = finite_number(radius_mm, "radius_mm", "mm")
    if not r_hole > 0:
        raise ValueError(f"radius_mm {r_hole:g} mm must be greater than 0 mm")
    spacing_zyx = np.array(image.GetSpacing(), dtype=float)[::-1]
    r_w = r_hole + 2.5  # centroid window: the hole, its blurred edge and a voxel
    margin = r_w + 4.0 + 2.0 * float(spacing_zyx.max())
    crop = crop_to_search(image, expected, radius, margin, "air hole")
    a = voxels_of(crop, "air-hole")
    s = smooth(a)
    where = f" within {radius:g} mm of {fmt_mm(expected)} mm"

    def physical(index_zyx: Sequence[SupportsFloat] | np.ndarray) -> tuple[float, float, float]:
        return index_to_physical(crop, index_zyx)

    d2 = squared_distance_mm2(a.shape, physical_to_index(crop, expected), spacing_zyx)
    in_search = d2 <= radius * radius
    material = float(np.median(s))
    darkest_at = np.unravel_index(int(np.argmin(np.where(in_search, s, np.inf))), s.shape)
    depth = material - float(s[darkest_at])
    if not depth >= min_contrast:
        raise ValueError(
            f"no air hole found{where}: the darkest spot is {depth:.0f} HU below the material "
            f"({material:.0f} HU) at {fmt_mm(physical(darkest_at))} mm (a hole needs "
            f"{min_contrast:.0f} HU)")
    mid = material - 0.5 * depth
    dark = s < mid
    labels = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(dark.astype(np.uint8)), True))
    voxel_mm3 = float(np.prod(spacing_zyx))
    sphere_mm3 = 4.0 / 3.0 * math.pi * r_hole ** 3
    last = np.array(a.shape) - 1
    holes: list[tuple[np.ndarray, float]] = []  # (start centre index, volume)
    ignored = 0
    for lab in range(1, int(labels.max()) + 1):
        zyx = np.array(np.nonzero(labels == lab))
        if zyx.shape[1] == 0 or not bool(in_search[tuple(zyx)].any()):
            continue
        volume = zyx.shape[1] * voxel_mm3
        whole = not (np.any(zyx.min(axis=1) == 0) or np.any(zyx.max(axis=1) == last))
        lo, hi = HOLE_VOLUME_RANGE
        if whole and lo * sphere_mm3 <= volume <= hi * sphere_mm3:
            holes.append((zyx.mean(axis=1), volume))
        else:
            ignored += 1
    notes = "" if not ignored else (
        f"; {ignored} dark region{'s' if ignored != 1 else ''} of another size or cut by the "
        f"search region's edge ignored")
    if not holes:
        raise ValueError(f"no air hole of radius {r_hole:g} mm found{where}{notes}")
    if len(holes) > 1:
        listed = "; ".join(f"{fmt_mm(physical(c))} mm, {v:.0f} mm3" for c, v in holes)
        raise ValueError(f"found {len(holes)} air-hole-like objects{where}, expected one: "
                         f"{listed}")
    (centre, volume), = holes
    box, grid = local_box(a, [round(float(v)) for v in centre],
                           np.ceil((r_w + 4.0) / spacing_zyx).astype(int) + 1)
    sp = spacing_zyx[:, None, None, None]
    bg = air = material
    voxels = 0
    for _ in range(CENTROID_ITERATIONS + 1):
        d = np.sqrt((((grid - centre[:, None, None, None]) * sp) ** 2).sum(axis=0))
        shell = box[(d >= r_w + 0.5) & (d <= r_w + 4.0)]
        bg = float(np.median(shell))
        noise = 1.4826 * float(np.median(np.abs(shell - bg)))
        inner = d <= r_w
        core = box[inner][box[inner] < 0.5 * (bg + float(s[darkest_at]))]
        air = float(np.median(core)) if core.size else float(box[inner].min())
        tau = 3.0 * noise
        w = np.clip(bg - tau - box[inner], 0.0, max(bg - tau - air, 1.0))
        total = float(w.sum())
        if not total > 0:
            raise ValueError(f"no air hole found{where}: the dark spot at "
                             f"{fmt_mm(physical(centre))} mm has no voxels below its surroundings")
        centre = (grid[:, inner] * w).sum(axis=1) / total
        voxels = int(np.count_nonzero(w))
    return AirHoleFound(physical(centre), voxels, bg, air, volume)
