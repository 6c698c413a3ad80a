"""Which planning-CT voxels the registration samples: the most informative ones (largest
gradient) and random subsets of them, uniform or drawn by importance with weights that
keep the estimate unbiased (docs/registration.md)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _importance_subset(mask: np.ndarray, img: sitk.Image, max_samples: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About `max_samples` voxels of `mask` drawn with probability growing with the
    planning CT's gradient (edges carry the position information), and the weight
    1/probability of each: the weighted sum over the subset is an unbiased estimate
    of the sum over every voxel, so its optimum is that of full sampling (which a
    plain gradient threshold is not: it keeps one side of an edge more than the
    other and moved the result by up to 0.4 mm along the slices), with far less
    scatter than a uniform draw of the same size. Fixed seed: deterministic."""
    g = sitk.GetArrayFromImage(sitk.GradientMagnitude(img)).astype(np.float32)
    score = g + np.float32(g[mask].mean() if mask.any() else 0.0)
    total = float(score[mask].sum())
    if max_samples <= 0 or total <= 0:
        return mask, np.ones(mask.shape, dtype=np.float32)
    sel = score[mask]
    k = max_samples / total
    for _ in range(4):  # the clip at 1 loses samples: scale up until ~max_samples remain
        expected = float(np.minimum(np.float32(1.0), sel * np.float32(k)).sum())
        if expected >= 0.98 * max_samples or expected >= 0.98 * sel.size:
            break
        k *= max_samples / max(expected, 1.0)
    prob = np.minimum(np.float32(1.0), score * np.float32(k))
    pick = mask & (np.random.default_rng(seed).random(mask.shape, dtype=np.float32) < prob)
    return pick, np.float32(1.0) / np.maximum(prob, np.float32(1e-6))


def _voxel_subset(mask: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """About `max_samples` of the voxels in `mask`, drawn at random with a fixed seed
    (deterministic). A random subset of voxel centres, not a regular lattice: a
    lattice has few sub-voxel phases against the daily image's grid, and its linear
    interpolation error then adds up instead of averaging out (docs/registration.md)."""
    n = int(mask.sum())
    if max_samples <= 0 or n <= max_samples:
        return mask
    return mask & (np.random.default_rng(seed).random(mask.shape, dtype=np.float32)
                   < np.float32(max_samples / n))


def _informative_array(img: sitk.Image, fraction: float) -> np.ndarray:
    """numpy (z, y, x) mask of the `fraction` of voxels with the largest gradient."""
    if fraction >= 1.0:
        return np.ones(sitk.GetArrayViewFromImage(img).shape, dtype=bool)
    g = sitk.GetArrayFromImage(sitk.GradientMagnitude(img))  # a copy: the image is a temporary
    return g >= np.percentile(g, 100.0 * (1.0 - fraction))


def _informative_mask(img: sitk.Image, fraction: float) -> sitk.Image:
    """Mask of the `fraction` of voxels with the largest gradient magnitude."""
    g = sitk.GradientMagnitude(img)
    cut = float(np.percentile(sitk.GetArrayViewFromImage(g), 100.0 * (1.0 - fraction)))
    return sitk.BinaryThreshold(g, cut, 1e30, 1, 0)
