"""`make demo MODE=4d|monitor`: the respiratory modes of the simulated fraction.

4d: a lung target moves with breathing (12 mm superior-inferior, cos^4 trace).
    A respiration-sorted CBCT (10 phases) is registered phase by phase; the
    couch correction brings the target's time-weighted mean position to the
    isocentre. The couch is re-imaged and the mean position re-measured.
monitor: beam-on with intrafraction kV imaging; the beam is held through the
    room PLC when the target drifts out of tolerance (see sim/intrafraction.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.demo_steps import (
    POSITION,
    TOL_MM,
    igrtctl,
    monitor_start,
    open_session,
    propose_and_move,
    record_imaging,
    say,
    step,
    write_registration,
)
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

SETUP_ERROR_4D = Pose(3.0, -4.0, 2.0, 0.0, 0.0, 0.0)
AMPLITUDE_TOL_MM = 1.0


def run(mode: str, out: Path, seed: int) -> int:
    if mode == "4d":
        return run_4d(out, seed)
    if mode == "monitor":
        return run_monitor(out, seed)
    raise ValueError(f"unknown demo mode {mode!r}")


def _four_d(plan_ct: Any, world: PatientWorld, couch: Pose, rng: np.random.Generator,
            out: Path, label: str) -> tuple[Any, Any]:
    from imaging.fourd import register_4d
    from imaging.plots import trajectory_png
    from sim.breathing import TUMOUR_CENTRE_MM, acquire_4d_cbct

    t0 = time.perf_counter()
    phases, truth = acquire_4d_cbct(rng, setup_a_4x4=world.placement, couch_pose=couch,
                                    pivot=world.pivot, iso=TUMOUR_CENTRE_MM)
    t_acq = time.perf_counter() - t0
    result = register_4d(plan_ct, phases, TUMOUR_CENTRE_MM)
    trajectory_png(result, out / f"trajectory_{label}.png")
    say(f"   {len(phases)} phases acquired in {t_acq:.1f} s, registered in {result.seconds:.2f} s")
    say(f"   amplitude {np.round(result.amplitude_mm, 2).tolist()} mm "
        f"(truth {np.round(truth.amplitude_mm, 2).tolist()} mm); mean target position "
        f"{np.round(result.mean_position_mm, 2).tolist()} mm "
        f"(truth {np.round(truth.mean_position_mm, 2).tolist()} mm)")
    if not result.converged:
        raise RuntimeError(f"4D registration refused: {result.reason}")
    return result, truth


def run_4d(out: Path, seed: int) -> int:
    from imaging.fourd import correction_matrix
    from sim.breathing import TUMOUR_CENTRE_MM, breathing_phantom
    from sim.imager import planning_ct

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    iso = tuple(float(v) for v in TUMOUR_CENTRE_MM)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"mode": "4d", "setup_error": SETUP_ERROR_4D.as_dict()}
    t_start = time.monotonic()
    step(1, "Simulated room: couch on a pty, room PLC on Modbus TCP, igrtd as its own process")
    with SimRoom(with_plc=True) as room:
        state = out / "state"
        daemon = DaemonProcess(room.room_config(state), state, out / "igrtd.log").start()
        sock = daemon.socket_path
        try:
            couch0 = room.couch_pose
            world = PatientWorld.with_setup_error(iso, POSITION,
                                                  tuple(CouchModel.default().pivot),
                                                  couch0.plus(SETUP_ERROR_4D))
            step(2, f"Treatment session: lung target at isocentre {iso} mm, breathing")
            say(f"   injected set-up error: {SETUP_ERROR_4D}")
            open_session(sock, iso)  # type: ignore[arg-type]
            plan_ct = planning_ct(breathing_phantom((0.0, 0.0, 0.0)), rng=rng)

            step(3, "Image: 4D CBCT (10 respiratory phases), per-phase target registration")
            uid = record_imaging(sock)
            result, truth = _four_d(plan_ct, world, couch0, rng, out, "before")
            report["registration_4d"] = result.to_json_dict()
            report["truth_before"] = {"mean_position_mm": truth.mean_position_mm.tolist(),
                                      "amplitude_mm": truth.amplitude_mm.tolist()}
            matrix = correction_matrix(result, "mean")
            reg_path = write_registration(out, matrix, uid)
            say(f"   correction uses the time-weighted mean position; REG {reg_path}")

            step(4, "Propose, confirm, hold-to-run move")
            propose_and_move(room, sock, reg_path, uid, iso, report)  # type: ignore[arg-type]

            step(5, "Verify: re-acquire the 4D CBCT; the mean target position is at the isocentre")
            couch1 = room.couch_pose
            result2, truth2 = _four_d(plan_ct, world, couch1, rng, out, "after")
            true_off = float(np.linalg.norm(truth2.mean_position_mm - np.asarray(iso)))
            est_err = float(np.linalg.norm(np.asarray(result2.mean_position_mm)
                                           - truth2.mean_position_mm))
            amp_err = float(np.max(np.abs(np.asarray(result2.amplitude_mm)
                                          - truth2.amplitude_mm)))
            report["verification"] = {
                "registration_4d": result2.to_json_dict(),
                "true_mean_offset_from_iso_mm": true_off,
                "mean_position_error_mm": est_err,
                "amplitude_error_mm": amp_err,
            }
            ok = true_off <= TOL_MM and est_err <= TOL_MM and amp_err <= AMPLITUDE_TOL_MM
            report["ok"] = ok
            report["seconds"] = round(time.monotonic() - t_start, 1)
        finally:
            daemon.stop()
    report["path"] = str(out / "report.json")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    say("\n== Report")
    say(f"   mean target position after the move: {true_off:.2f} mm from the isocentre "
        f"(tolerance {TOL_MM} mm); 4D estimate within {est_err:.2f} mm of the truth, "
        f"amplitude within {amp_err:.2f} mm")
    say(f"   {'PASS' if ok else 'FAIL'}: report written to {report['path']} "
        f"({report['seconds']} s); trajectory plots {out}/trajectory_*.png")
    return 0 if ok else 1


def run_monitor(out: Path, seed: int) -> int:
    from sim.intrafraction import MARKERS_MM, TARGET_MM, demo_scenario
    from sim.kv_stream import monitor_scenario_via_igrtd

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scenario = demo_scenario()
    step(1, "Simulated room: couch on a pty, room PLC on Modbus TCP, kV imaging system on "
            "igrtd's imager socket, igrtd as its own process")
    say(f"   {scenario.duration_s:.0f} s of beam-on at {1 / scenario.frame_period_s:.0f} frames/s: "
        "breathing, a cough, a sudden shift, a slow drift out and back, a marker occlusion")

    def begin(sock: Path) -> None:
        step(2, "Beam on: igrtd monitors the target (gold marker, stereo kV pair)")
        monitor_start(sock, MARKERS_MM[0], TARGET_MM)

    def end(sock: Path) -> dict[str, Any]:
        step(3, "Beam off: end monitoring")
        done = igrtctl("monitor", "stop", "--records", "--json", user="alice", socket=sock,
                       capture=True)
        if done.returncode:
            raise RuntimeError(f"igrtd refused monitor stop: {done.stderr.strip()}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    report = monitor_scenario_via_igrtd(out, seed, begin=begin, end=end)
    ok = bool(report.get("ok"))
    say("\n== Report")
    say(f"   frames: {report['frames_delivered']} sent by the imaging system, "
        f"{report['frames_processed']} processed by igrtd "
        f"({report['frames_without_estimate']} without an estimate), "
        f"estimate error max {report['estimate_error_mm_max']} mm")
    say(f"   beam holds: {report['holds']} (required {report['required_holds']}), releases "
        f"{report['releases']}; missed {len(report['missed_holds'])}, late "
        f"{len(report['late_holds'])}, spurious {len(report['spurious_holds'])}, "
        f"unexplained stale {len(report['unexplained_stale_holds'])}")
    for e in report["events"]:
        say(f"     {e['t_s']:7.3f} s  {e['event']:<12} {e['cause']:<13} {e['reason']}")
    say(f"   hold latency through igrtd (frame sent -> PLC coil set): p50 "
        f"{report['monitor_hold_latency_via_daemon_p50_ms']} ms, p99 "
        f"{report['monitor_hold_latency_via_daemon_p99_ms']} ms "
        f"(target <= {report['latency_target_ms']:g} ms)")
    say(f"   {'PASS' if ok else 'FAIL'}: report {out / 'report.json'}, plot {report['plot']}")
    return 0 if ok else 1
