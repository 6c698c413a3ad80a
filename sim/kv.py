"""Simulated kV radiographs through the true patient pose.

The anatomy is the analytic phantom (sim/phantom.py) placed on the couch as in
sim/imager.py: the daily-frame point q shows the planning anatomy at
T^-1(q), with T the true registration. The phantom is sampled directly in the
daily frame (no interpolation of the planning CT, a grid of its own) and
projected with the cone-beam projector of imaging/drr.py at one ray per
detector pixel and a tighter slab smear than the registration uses. The
radiograph is then degraded like a flat-panel kV image: scatter (a broad
blurred fraction of the primary), detector blur, and quantum noise on the
transmitted intensity, before the usual log conversion back to line
integrals. Images are 2D float32 .mha files carrying their geometry as
IGRT_* metadata (imaging.drr.KvGeometry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imaging.drr import AttenuationVolume, KvGeometry, drr, kv_image
from safety.pose import Pose
from sim.imager import true_registration_matrix
from sim.phantom import Phantom

STEREO_PAIR: tuple[KvGeometry, KvGeometry] = (KvGeometry(angle_deg=0.0), KvGeometry(angle_deg=90.0))


@dataclass(frozen=True)
class KvDegradation:
    scatter_fraction: float = 0.25  # scatter-to-primary ratio
    scatter_sigma_mm: float = 25.0  # on the detector
    blur_sigma_mm: float = 0.5  # detector / focal spot blur
    photons_per_pixel: float = 2.0e4  # unattenuated fluence; sets the quantum noise


def daily_volume(
    phantom: Phantom,
    true_t: np.ndarray,
    iso: Sequence[float],
    half_mm: tuple[float, float, float] = (180.0, 180.0, 180.0),
    voxel_mm: float = 1.5,
) -> sitk.Image:
    """The phantom as it lies in the daily frame (HU, float32), a box about the
    isocentre. `half_mm` must cover the body across the beams and the field along
    the gantry axis."""
    size = [int(np.ceil(2 * h / voxel_mm)) + 1 for h in half_mm]
    origin = [float(iso[i]) - (size[i] - 1) * voxel_mm / 2 for i in range(3)]
    grid = np.eye(4)
    grid[:3, :3] *= voxel_mm
    grid[:3, 3] = origin
    aff = np.linalg.inv(true_t) @ grid
    hu = phantom.evaluate_grid((size[0], size[1], size[2]), aff)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([voxel_mm] * 3)
    img.SetOrigin(origin)
    return img


def degrade(
    line_integral: np.ndarray, geometry: KvGeometry, rng: np.random.Generator,
    d: KvDegradation = KvDegradation(),
) -> np.ndarray:
    """Scatter, blur and quantum noise on the transmitted intensity, then -ln."""
    primary = np.exp(-line_integral.astype(np.float64))
    img = sitk.GetImageFromArray(primary)
    img.SetSpacing((geometry.pixel_mm, geometry.pixel_mm))
    scatter = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, d.scatter_sigma_mm))
    total = primary + d.scatter_fraction * scatter
    if d.blur_sigma_mm > 0:
        t = sitk.GetImageFromArray(total)
        t.SetSpacing((geometry.pixel_mm, geometry.pixel_mm))
        total = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(t, d.blur_sigma_mm))
    counts = rng.poisson(np.maximum(total, 0) * d.photons_per_pixel).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return (-np.log(counts / d.photons_per_pixel)).astype(np.float32)


def acquire_kv(
    phantom: Phantom,
    a_4x4: np.ndarray,
    couch_pose: Pose,
    pivot: Sequence[float],
    iso: Sequence[float],
    patient_position: str,
    rng: np.random.Generator,
    geometries: Sequence[KvGeometry] = STEREO_PAIR,
    voxel_mm: float = 1.5,
    degradation: KvDegradation | None = KvDegradation(),
) -> list[sitk.Image]:
    """kV radiographs (one per geometry) of the phantom through the true pose."""
    true_t = true_registration_matrix(a_4x4, couch_pose, pivot, iso, patient_position)
    return kv_through_transform(phantom, true_t, iso, patient_position, rng, geometries,
                                voxel_mm, degradation)


def kv_through_transform(
    phantom: Phantom,
    true_t: np.ndarray,
    iso: Sequence[float],
    patient_position: str,
    rng: np.random.Generator,
    geometries: Sequence[KvGeometry] = STEREO_PAIR,
    voxel_mm: float = 1.5,
    degradation: KvDegradation | None = KvDegradation(),
) -> list[sitk.Image]:
    """kV radiographs of the phantom whose anatomy sits at T(p) in the daily frame."""
    vol = AttenuationVolume.from_ct(daily_volume(phantom, true_t, iso, voxel_mm=voxel_mm))
    iso3 = (float(iso[0]), float(iso[1]), float(iso[2]))
    out = []
    for g in geometries:
        # The volume is already in the daily frame: identity registration.
        li = drr(vol, g, np.eye(4), iso3, patient_position, rays="full")
        if degradation is not None:
            li = degrade(li, g, rng, degradation)
        out.append(kv_image(li, g))
    return out


def write_kv(images: Sequence[sitk.Image], directory: Path, stem: str = "kv") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for img in images:
        angle = float(img.GetMetaData("IGRT_ANGLE_DEG"))
        p = directory / f"{stem}_{angle:03.0f}.mha"
        sitk.WriteImage(img, str(p))
        paths.append(p)
    return paths
