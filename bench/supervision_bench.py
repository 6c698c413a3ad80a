"""Motion supervision figures (issue 5), igrtd as a child process against the
simulated couch (pty) and PLC (Modbus TCP), all times on the simulators' clock.

    python -m bench.supervision_bench

Sample counts: 200 interlock openings per condition and 50 heartbeat losses
under `make bench` (so `_p50_ms`, `_max_ms` and, from 100 samples, `_p90_ms`;
no p99); 1,000 each under `make bench-long`, which adds the `_p99_ms` keys.
Every series reports `<name>_samples`.

- interlock_to_stop_p50_ms / _p99_ms / _max_ms: a PLC input opening on the
  simulator (door, e-stop chain, collision pads, motion enable, imager arm
  parked; its `input_changes` timestamp) to the STOP frame executed by the
  simulated couch (its device-side receive time: the STOP's last byte off
  the 921600 baud wire, 0.08 ms for the STOP itself and up to 0.36 ms more
  behind a TARGET already going out), during a move. Target p99 <= 3 ms
  (issue 13); measured with the PLC read every 1 ms while motion is possible
  (`plc.poll_interval_s` 0.001, set below; the shipped default is 3 ms).
- interlock_to_stop_during_registration_p99_ms: the same while igrtd runs rigid
  registrations back to back (its `register` command, planning CT + CBCT from
  sim/imager.py written as .mha; in igrtd's registration worker process at
  nice 10). Target p99 <= 4 ms.
- heartbeat_loss_to_stop_p99_ms: the console stops sending `hold`: from the
  last hold sent + hold_timeout_s to STOP at the couch; also the same minus the
  timeout (heartbeat_loss_to_stop_over_timeout_p99_ms). Budget: timeout + 10 ms.

igrtd's idle CPU is bench/idle_bench.py's.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from campaign.rig import Rig

from bench.stats import samples, tail_figures
from safety.pose import Pose

INTERLOCKS = ("door_closed", "estop_chain_ok", "collision_pads_clear", "motion_enable_pressed",
              "imager_kv_source_parked", "imager_detector_parked")
N_INTERLOCK = 200
N_HEARTBEAT = 50
POLL_S = 0.001  # the 1 ms PLC read the figures are stated at (default 3 ms)
SPEED_SCALE = 3.0  # a 20 mm move lasts ~0.5 s: long enough to outlive a 0.25 s hold timeout


def _start_move(rig: Rig, rng: random.Random) -> Any:
    st = rig.ready_for_next()
    cur = Pose.from_dict(st["couch"]["pose"])
    sign = -1.0 if cur.lat > 0 else 1.0
    target = Pose(cur.lat + sign * rng.uniform(15.0, 20.0), cur.long, cur.vert)
    prop = rig.propose_to(target, cur)
    rig.confirm(prop["id"])
    if prop["verdict"] == "needs_second_approval":  # 15-20 mm: over the 5 mm tier
        reply = rig.try_approve(prop["id"])
        if not reply["ok"]:
            raise RuntimeError(f"second approval refused: {reply}")
    holder = rig.hold(prop["id"])
    deadline = time.monotonic() + 2.0
    while not rig.couch_moving():
        if time.monotonic() > deadline:
            raise RuntimeError(f"move did not start: {rig.status()['reason']}")
        time.sleep(0.002)
    return holder


def _first_stop_after(rig: Rig, t: float, timeout: float = 1.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        stops = [s for s, _ in rig.executed_since(t, "STOP")][:1]
        if stops:
            return float(stops[0])
        if time.monotonic() > deadline:
            raise RuntimeError("no STOP reached the couch within 1 s")
        # Each look is a call into the simulators' process: seldom, so that the
        # bench does not load the devices whose timestamps it reads.
        time.sleep(0.02)


def interlock_samples(rig: Rig, n: int, rng: random.Random) -> list[float]:
    out = []
    for _ in range(n):
        holder = _start_move(rig, rng)
        time.sleep(rng.uniform(0.01, 0.06))
        t_open = rig.inject(rng.choice(INTERLOCKS), False)
        out.append((_first_stop_after(rig, t_open) - t_open) * 1e3)
        holder.stop()
    return out


def heartbeat_samples(rig: Rig, n: int, rng: random.Random, timeout_s: float) -> list[float]:
    out = []
    for _ in range(n):
        holder = _start_move(rig, rng)
        time.sleep(rng.uniform(0.0, 0.05))
        last = holder.stop()
        out.append((_first_stop_after(rig, last) - last) * 1e3)
    return out


def write_images(directory: Path) -> tuple[str, str]:
    import numpy as np
    import SimpleITK as sitk

    from sim.imager import acquire_cbct, placement_for_registration, planning_ct, rigid_matrix
    from sim.phantom import DEFAULT_ISO_MM, make_phantom

    rng = np.random.default_rng(5)
    phantom = make_phantom()
    pivot = (0.0, 0.0, -150.0)
    t = rigid_matrix(DEFAULT_ISO_MM, (4.0, -3.0, 2.0), (1.0, 0.5, -1.0))
    a = placement_for_registration(t, Pose(), pivot, DEFAULT_ISO_MM, "HFS")
    fixed, moving = directory / "planning_ct.mha", directory / "cbct.mha"
    sitk.WriteImage(planning_ct(phantom, rng=rng), str(fixed))
    sitk.WriteImage(acquire_cbct(phantom, a, Pose(), pivot, DEFAULT_ISO_MM, "HFS", rng),
                    str(moving))
    return str(fixed), str(moving)


class Registrations:
    """igrtd's `register` command in a loop on its own connection."""

    def __init__(self, rig: Rig, fixed: str, moving: str) -> None:
        from daemon.control import ControlClient

        assert rig.daemon is not None
        self.client = ControlClient(rig.daemon.socket_path, "alice", timeout_s=120)
        self.args = {"fixed": fixed, "moving": moving}
        self.done = 0
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="registrations")

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            reply = self.client.call("register", **self.args)
            if not reply.get("ok"):
                raise RuntimeError(f"register refused: {reply}")
            self.seconds.append(time.monotonic() - t0)
            self.done += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(120)
        self.client.close()


def run() -> dict[str, float]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fixed, moving = write_images(work)
        # Production motion timing (hold_timeout_s 0.25 s) and verdict tiers: the
        # 15-20 mm moves are confirmed and given their second approval.
        with Rig(work / "room", daemon_overrides={"motion": {}, "plc": {"poll_interval_s": POLL_S}},
                 couch_kwargs={"speed_scale": SPEED_SCALE, "heartbeat_timeout_ms": 250}) as rig:
            timeout_s = 0.25
            rig.ready_for_next()
            plain = interlock_samples(rig, samples(N_INTERLOCK), rng)
            hb = heartbeat_samples(rig, samples(N_HEARTBEAT), rng, timeout_s)
            with Registrations(rig, fixed, moving) as regs:
                time.sleep(0.5)  # the first registration is under way (reading, pyramid)
                during = interlock_samples(rig, samples(N_INTERLOCK), rng)
                n_regs = regs.done
    over = [x - timeout_s * 1e3 for x in hb]
    return {
        **tail_figures("interlock_to_stop", "ms", plain),
        **tail_figures("interlock_to_stop_during_registration", "ms", during),
        "registrations_during_measurement": float(n_regs),
        **tail_figures("heartbeat_loss_to_stop", "ms", hb),
        **tail_figures("heartbeat_loss_to_stop_over_timeout", "ms", over),
        "hold_timeout_ms": timeout_s * 1e3,
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k} {v:.2f}")
