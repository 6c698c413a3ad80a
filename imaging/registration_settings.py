"""What a rigid 3D registration is asked to do: the pyramid levels and the settings of
`imaging.registration.register_rigid` (the method is described in that module)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

Metric = Literal["correlation", "mattes"]
Sampling = Literal["regular", "random"]
Optimizer = Literal["gradient_descent", "gauss_newton"]


@dataclass(frozen=True)
class Level:
    """One pyramid level. `spacing_mm` > 0: both images block-averaged and resampled
    to that isotropic spacing; 0: the cropped images at their native resolution."""

    spacing_mm: float
    # Of the fixed level voxels; 1.0 = all of them, at their centres. Below 1, ITK's
    # regular/random sampling, which moves every sample off its voxel centre by a
    # random offset (about a third of the voxel) and so interpolates the fixed image.
    sampling_fraction: float
    learning_rate: float  # first step of the regular-step optimiser (mm, after scaling)
    # Converged when the step (gradient descent) or the largest displacement an update
    # causes in the region (Gauss-Newton) is below this, in mm.
    min_step: float
    max_iterations: int = 200
    # Sample only among this fraction of fixed voxels with the strongest gradient.
    informative_fraction: float = 1.0
    # Gauss-Newton only: about this many voxel centres are drawn (0: every voxel).
    max_samples: int = 0
    # "gradient_descent": SimpleITK's regular-step gradient descent on `metric`.
    # "gauss_newton": our own Gauss-Newton on the correlation (least squares with a
    # fitted gain, offset and smooth bias); see
    # registration_refine._refine_gauss_newton.
    optimizer: Optimizer = "gradient_descent"
    # Gauss-Newton only: degree of the smooth intensity bias fitted with gain and
    # offset (0: none, i.e. plain correlation; 2: quadratic, enough for cupping).
    bias_order: int = 2
    # Gauss-Newton only: draw the `max_samples` voxels with probability growing with
    # the planning CT's gradient, weighted back to an unbiased estimate (see
    # registration_sampling._importance_subset); False: a uniform draw.
    importance_sampling: bool = True


@dataclass(frozen=True)
class RegistrationSettings:
    metric: Metric = "correlation"
    roi_half_mm: float = 60.0
    # Extra moving-image margin around the ROI: the largest set-up error we expect
    # to recover (shift plus rotation lever arm) must stay inside the crop.
    moving_margin_mm: float = 25.0
    refine_margin_mm: float = 10.0
    levels: tuple[Level, ...] = (
        # Capture: ITK regular-step descent on a 5 mm grid, 10 % of its voxels; it
        # only has to land within a voxel or so of the optimum.
        Level(5.0, 0.1, 2.0, 0.05),
        # Refinement: Gauss-Newton at native resolution on ~15,000 voxel centres of the
        # planning CT (every slice), stopping when an update moves no point of the
        # region by 0.01 mm.
        Level(0.0, 1.0, 0.0, 0.01, max_iterations=20, max_samples=15000,
              optimizer="gauss_newton"),
    )
    sampling: Sampling = "regular"
    relaxation: float = 0.5
    gradient_tolerance: float = 1e-8
    mattes_bins: int = 50
    seed: int = 20240611
    # ITK threads; default leaves one core to the daemon's event loop (measured: on
    # 2 cores a second ITK thread gains little and doubles the loop's p99 lag).
    threads: int | None = field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))
    # Quality: a converged match whose normalised correlation (NCC = sqrt(-metric),
    # ITK's correlation metric is -NCC^2) is below this is refused as not
    # trustworthy. Phantom matches reach ~0.99; a left-right mirrored CBCT ~0.54.
    min_correlation: float = 0.8
    # Planning-CT voxels in dense sheets thinner than about twice this (the couch
    # table-top skins) and around them are not sampled; 0 turns that off.
    exclude_thin_sheets_mm: float = 3.0
    body_threshold_hu: float = -500.0  # planning HU above which a voxel is body or couch
    # Samples stay within this distance of the body (bulk tissue): air outside it is
    # flat in the plan but holds the couch wherever it is on the day.
    body_band_mm: float = 1.5
    sheet_min_hu: float = 150.0  # denser than any soft tissue: bone, couch skins
