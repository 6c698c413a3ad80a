"""A breathing patient for 4D (respiration-sorted) CBCT.

The anatomy is the procedural phantom of sim/phantom.py plus a lung tumour
(the 4D target) in the right lower lobe. Everything that rides on the
diaphragm moves rigidly with one breathing trace: the tumour, the lung
vessels, the liver (with a copy of its dome painted over the lung, so the
diaphragm edge moves), kidneys and stomach. Ribs, spine, body outline and
heart stay put.

Breathing trace (Lujan et al. 2003): the displacement from the end-exhale
position (the planning CT's) is

    d(t) = A * cos^(2n)(pi t / tau),  n = 2

with A an SI-dominant vector (a few mm AP), so the patient spends most of
the cycle near exhale and the time-weighted mean is A * mean(cos^4) = 3/8 A.
Phase sorting splits each cycle into `n_phases` equal time bins (phase 0 =
end-inhale); each phase volume shows the anatomy at the bin's mean
displacement and carries its time fraction (IGRT_PHASE_WEIGHT) and index
(IGRT_PHASE) as metadata. The truth (per-phase and time-weighted mean target
positions in the daily frame) comes back with the volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from safety.pose import Pose
from sim.imager import acquire_cbct, true_registration_matrix
from sim.phantom import Phantom, Primitive, make_phantom

TUMOUR_CENTRE_MM: tuple[float, float, float] = (-62.0, 18.0, 32.0)
META_PHASE = "IGRT_PHASE"
META_WEIGHT = "IGRT_PHASE_WEIGHT"


@dataclass(frozen=True)
class BreathingTrace:
    amplitude_mm: tuple[float, float, float] = (0.0, -3.0, -12.0)  # planning frame (LPS)
    period_s: float = 4.0
    power: int = 2  # n in cos^(2n)

    def displacement(self, t: np.ndarray) -> np.ndarray:
        """(len(t), 3) displacement from end-exhale, mm, planning frame."""
        c = np.cos(np.pi * np.asarray(t, dtype=float) / self.period_s) ** (2 * self.power)
        return c[:, None] * np.asarray(self.amplitude_mm, dtype=float)[None, :]

    def phase_bins(self, n_phases: int, samples: int = 20000) -> tuple[np.ndarray, np.ndarray]:
        """(bin-mean displacement (n, 3), time fraction (n,)) for equal phase bins."""
        t = (np.arange(samples) + 0.5) / samples * self.period_s
        d = self.displacement(t)
        k = np.minimum((t / self.period_s * n_phases).astype(int), n_phases - 1)
        means = np.array([d[k == i].mean(axis=0) for i in range(n_phases)])
        weights = np.array([(k == i).mean() for i in range(n_phases)])
        return means, weights

    def time_mean(self, samples: int = 20000) -> np.ndarray:
        t = (np.arange(samples) + 0.5) / samples * self.period_s
        return self.displacement(t).mean(axis=0)


def _moves(p: Primitive) -> bool:
    """Rides on the diaphragm: soft tissue and gas below it, and the lung vessels."""
    if p.kind != "ellipsoid" or p.hu >= 300:
        return False
    c = p.centre
    if p.hu == -60.0:  # lung vessels
        return True
    if p.hu <= -800 and c[2] > 30:  # the lungs themselves (air space) stay
        return False
    if abs(c[0]) < 40 and c[1] < -20 and c[2] > 0:  # heart
        return False
    return c[2] < 10


def breathing_phantom(displacement_mm: Sequence[float], seed: int = 7) -> Phantom:
    """The phantom with everything that breathes shifted by `displacement_mm`."""
    base = make_phantom(seed)
    d = np.asarray(displacement_mm, dtype=float)
    out: list[Primitive] = []
    liver: Primitive | None = None
    lungs_seen = 0
    for p in base.primitives:
        q = replace(p, centre=tuple(np.asarray(p.centre) + d)) if _moves(p) else p
        if liver is None and p.kind == "ellipsoid" and p.hu == 60.0:
            liver = q
        out.append(q)
        if p.hu == -820.0:
            lungs_seen += 1
            if lungs_seen == 2 and liver is not None:
                # the liver dome painted over the lungs: the diaphragm edge moves
                out.append(liver)
    out.append(Primitive("ellipsoid", tuple(np.asarray(TUMOUR_CENTRE_MM) + d), (11.0, 10.0, 12.0),
                         35.0))
    return Phantom(tuple(out), name="thorax-breathing")


@dataclass(frozen=True)
class FourDTruth:
    true_registration: np.ndarray  # static set-up error (bony anatomy), ITK convention
    phase_positions_mm: np.ndarray  # (n, 3) tumour centre per phase, daily frame
    weights: np.ndarray  # (n,) time fraction per phase
    mean_position_mm: np.ndarray  # time-weighted mean tumour centre, daily frame
    amplitude_mm: np.ndarray  # (3,) max - min per daily axis over the phases
    principal_amplitude_mm: float  # max - min along the principal direction over phases


def acquire_4d_cbct(
    rng: np.random.Generator,
    trace: BreathingTrace = BreathingTrace(),
    n_phases: int = 10,
    iso: Sequence[float] = TUMOUR_CENTRE_MM,
    patient_position: str = "HFS",
    setup_a_4x4: np.ndarray | None = None,
    couch_pose: Pose | None = None,
    pivot: Sequence[float] = (0.0, 0.0, -150.0),
    size: Sequence[int] = (128, 128, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.5),
    seed: int = 7,
) -> tuple[list[sitk.Image], FourDTruth]:
    """`n_phases` CBCT-like phase volumes (daily frame, about `iso`) and the truth."""
    from sim.imager import setup_placement

    a = setup_a_4x4 if setup_a_4x4 is not None else setup_placement(iso, patient_position)
    couch_pose = couch_pose or Pose()
    t_true = true_registration_matrix(a, couch_pose, pivot, iso, patient_position)
    disp, weights = trace.phase_bins(n_phases)
    vols: list[sitk.Image] = []
    centre = np.asarray(TUMOUR_CENTRE_MM, dtype=float)
    pos = []
    for k in range(n_phases):
        ph = breathing_phantom(disp[k], seed)
        img = acquire_cbct(ph, a, couch_pose, pivot, iso, patient_position, rng,
                           degrade=True, size=size, spacing=spacing)
        img.SetMetaData(META_PHASE, str(k))
        img.SetMetaData(META_WEIGHT, repr(float(weights[k])))
        vols.append(img)
        p = centre + disp[k]
        pos.append((t_true @ np.append(p, 1.0))[:3])
    positions = np.array(pos)
    mean = (t_true @ np.append(centre + trace.time_mean(), 1.0))[:3]
    direction = _principal(positions, weights)
    proj = positions @ direction
    truth = FourDTruth(
        true_registration=t_true,
        phase_positions_mm=positions,
        weights=weights,
        mean_position_mm=mean,
        amplitude_mm=positions.max(axis=0) - positions.min(axis=0),
        principal_amplitude_mm=float(proj.max() - proj.min()),
    )
    return vols, truth


def _principal(positions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    c = positions - (weights[:, None] * positions).sum(axis=0) / weights.sum()
    _, _, vt = np.linalg.svd(c * np.sqrt(weights)[:, None], full_matrices=False)
    return vt[0]
