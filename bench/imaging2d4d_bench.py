"""Benchmark: DRR speed, 2D/3D kV-pair registration, 4D CBCT analysis.

    .venv/bin/python -m bench.imaging2d4d_bench

Figures (flat, units in the names):
* drr_ms: one 512x512 DRR (90 deg view) from the 256x256x128 planning CT with
  one ray per detector pixel (rays="full"; median of 9 after a warm-up, the CT
  already converted to attenuation, rows shared by one thread per CPU).
  drr_coarse_grid_ms: the same DRR cast on the coarser ray grid of
  rays="auto" and resampled onto the detector (median of 9); it is not a
  full-resolution DRR.
* drr_one_thread_cpu_ms: CPU time of the same full DRR cast by one thread
  (less sensitive to other processes on the machine than the wall times).
* drr_first_call_s: imaging.drr.warm_up() in a fresh process (loading the
  compiled ray caster and a first tiny cast; nothing is compiled at run time).
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
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imaging.drr import AttenuationVolume, KvGeometry, drr, warm_up
from imaging.fourd import register_4d
from imaging.registration2d3d import KvView, prepare_volumes, register_2d3d
from safety.pose import Pose
from sim.breathing import TUMOUR_CENTRE_MM, acquire_4d_cbct, breathing_phantom
from sim.imager import planning_ct, setup_placement, true_registration_matrix
from sim.kv import kv_through_transform
from sim.phantom import DEFAULT_ISO_MM, make_phantom

N_CASES = 6
DRR_REPEATS = 9
_ROOT = Path(__file__).resolve().parents[1]


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


def _first_call_s() -> float:
    """Seconds of imaging.drr.warm_up() in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", "from imaging.drr import warm_up; print(warm_up())"],
        cwd=_ROOT, capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.split()[-1])


def _median_ms(fn: Callable[[], object], repeats: int,
               clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) * 1e3


def _drr_figures(vol: AttenuationVolume, iso: tuple[float, float, float]) -> dict[str, float]:
    g = KvGeometry(angle_deg=90.0)
    warm_up()
    drr(vol, g, iso=iso, rays="full")  # builds the volume's ray-casting tables once
    drr(vol, g, iso=iso)
    return {
        "drr_ms": _median_ms(lambda: drr(vol, g, iso=iso, rays="full"), DRR_REPEATS),
        "drr_coarse_grid_ms": _median_ms(lambda: drr(vol, g, iso=iso), DRR_REPEATS),
        # CPU time of the calling thread, one thread: the work, whatever else runs
        "drr_one_thread_cpu_ms": _median_ms(
            lambda: drr(vol, g, iso=iso, rays="full", threads=1), DRR_REPEATS,
            clock=time.thread_time),
    }


def run() -> dict[str, float]:
    figures = {"drr_first_call_s": _first_call_s()}
    phantom = make_phantom()
    ct = planning_ct(phantom, rng=np.random.default_rng(11))
    iso = DEFAULT_ISO_MM
    figures.update(_drr_figures(AttenuationVolume.from_ct(ct), iso))

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
    return figures | {
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
