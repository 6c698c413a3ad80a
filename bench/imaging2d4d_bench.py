"""Benchmark: DRR speed, 2D/3D kV-pair registration, 4D CBCT analysis.

    .venv/bin/python -m bench.imaging2d4d_bench

Figures (flat, units in the names):
* drr_ms: one 512x512 DRR from the 256x256x128 planning CT with one ray per
  detector pixel (rays="full"; median of 5, the CT already converted to
  attenuation). drr_coarse_grid_ms: the same DRR cast on the coarser ray grid
  of rays="auto" and resampled onto the detector (median of 7); it is what
  the 2D/3D registration uses, not a full-resolution DRR.
* registration_2d3d_*: 6 phantom cases, set-up shifts 1-10 mm and rotations
  up to 2 deg about every axis, kV pair at 0/90 deg simulated through the true
  pose with scatter, blur and quantum noise. Errors: translation at the
  isocentre (mm) and rotation angle (deg) of T_est T_true^-1.
* registration_4d_10phase_s, fourd_*_error_mm: 10-phase 4D CBCT of the
  breathing phantom (12 mm SI, 3 mm AP), with a set-up error.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from imaging.drr import AttenuationVolume, KvGeometry, drr
from imaging.fourd import register_4d
from imaging.registration2d3d import KvView, prepare_volumes, register_2d3d
from safety.pose import Pose
from sim.breathing import TUMOUR_CENTRE_MM, acquire_4d_cbct, breathing_phantom
from sim.imager import planning_ct, setup_placement, true_registration_matrix
from sim.kv import kv_through_transform
from sim.phantom import DEFAULT_ISO_MM, make_phantom

N_CASES = 6


def _cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for k in range(N_CASES):
        d = rng.normal(size=3)
        shift = d / np.linalg.norm(d) * (1.0 + 9.0 * k / (N_CASES - 1))
        rot = rng.uniform(-2.0, 2.0, size=3)
        out.append((shift, rot))
    return out


def _errors(est: np.ndarray, truth: np.ndarray, iso: np.ndarray) -> tuple[float, float]:
    e = est @ np.linalg.inv(truth)
    mm = float(np.linalg.norm(e[:3, :3] @ iso + e[:3, 3] - iso))
    deg = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(e[:3, :3]) - 1) / 2))))
    return mm, deg


def run() -> dict[str, float]:
    phantom = make_phantom()
    ct = planning_ct(phantom, rng=np.random.default_rng(11))
    iso = DEFAULT_ISO_MM
    vol = AttenuationVolume.from_ct(ct)
    g = KvGeometry(angle_deg=90.0)
    drr(vol, g, iso=iso)  # warm-up
    coarse = []
    for _ in range(7):
        t0 = time.perf_counter()
        drr(vol, g, iso=iso)
        coarse.append(time.perf_counter() - t0)
    full = []
    for _ in range(5):
        t0 = time.perf_counter()
        drr(vol, g, iso=iso, rays="full")
        full.append(time.perf_counter() - t0)

    volumes = prepare_volumes(ct)
    rng = np.random.default_rng(2024)
    secs, errs_mm, errs_deg = [], [], []
    for shift, rot in _cases(rng):
        a = setup_placement(iso, "HFS", shift, rot)
        truth = true_registration_matrix(a, Pose(), (0.0, 0.0, -150.0), iso, "HFS")
        images = kv_through_transform(phantom, truth, iso, "HFS", rng)
        res = register_2d3d(volumes, [KvView.from_sitk(i) for i in images], iso, "HFS")
        mm, deg = _errors(res.matrix, truth, np.asarray(iso))
        secs.append(res.seconds)
        errs_mm.append(mm if res.converged else float("inf"))
        errs_deg.append(deg if res.converged else float("inf"))

    ct4 = planning_ct(breathing_phantom((0.0, 0.0, 0.0)), rng=np.random.default_rng(12))
    a4 = setup_placement(TUMOUR_CENTRE_MM, "HFS", (2.0, -3.0, 1.5), (0.0, 0.0, 0.0))
    phases, truth4 = acquire_4d_cbct(np.random.default_rng(13), setup_a_4x4=a4)
    r4 = register_4d(ct4, phases, TUMOUR_CENTRE_MM)
    amp_err = max(float(np.max(np.abs(np.array(r4.amplitude_mm) - truth4.amplitude_mm))),
                  abs(r4.principal_amplitude_mm - truth4.principal_amplitude_mm))
    return {
        "drr_ms": statistics.median(full) * 1e3,
        "drr_coarse_grid_ms": statistics.median(coarse) * 1e3,
        "registration_2d3d_median_s": statistics.median(secs),
        "registration_2d3d_worst_mm": max(errs_mm),
        "registration_2d3d_worst_deg": max(errs_deg),
        "registration_4d_10phase_s": r4.seconds,
        "fourd_mean_error_mm": float(np.linalg.norm(np.array(r4.mean_position_mm)
                                                    - truth4.mean_position_mm)),
        "fourd_amplitude_error_mm": amp_err,
    }


if __name__ == "__main__":
    t = time.perf_counter()
    for k, v in run().items():
        print(f"{k}: {v:.3f}")
    print(f"(bench took {time.perf_counter() - t:.1f} s)")
