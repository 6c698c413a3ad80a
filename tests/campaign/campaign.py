"""Runs fault scenarios against one daemon and one simulated room, then checks
the invariants (tests/campaign/invariants.py) on the device-side records."""

from __future__ import annotations

import bisect
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from safety.pose import Pose

from .invariants import Report, Timing, check
from .rig import (
    COUCH_HEARTBEAT_TIMEOUT_MS,
    HOLD_TIMEOUT_S,
    PLC_RECONNECT_MIN_S,
    PLC_STALE_S,
    Holder,
    Rig,
)
from .scenarios import Scenario, make_scenario, move_size_mm, pick_target

log = logging.getLogger("campaign")

TIMING = Timing(plc_stale_s=PLC_STALE_S, plc_reconnect_min_s=PLC_RECONNECT_MIN_S,
                hold_timeout_s=HOLD_TIMEOUT_S,
                couch_heartbeat_timeout_s=COUCH_HEARTBEAT_TIMEOUT_MS / 1000.0)
SETTLED = ("DONE", "STOPPED", "FAULT", "PROPOSED", "READY")
MAX_SCENARIO_S = 3.0


@dataclass
class CampaignResult:
    report: Report
    scenarios: int
    seconds: float
    outcomes: dict[str, int] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)
    timelines: dict[int, list[str]] = field(default_factory=dict)


class Campaign:
    def __init__(self, rig: Rig, seed: int) -> None:
        self.rig = rig
        self.rng = random.Random(seed)
        self.starts: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.stuck: list[str] = []

    def scenario_of(self, t: float) -> int:
        return bisect.bisect_right(self.starts, t) - 1

    # ------------------------------------------------------------------ run
    def run(self, n: int) -> CampaignResult:
        rig = self.rig
        rig.ready_for_next()
        init = rig.sim(lambda couch, plc: (time.monotonic(), plc.inputs(),
                                           len(plc.input_changes),
                                           len(couch.executed_commands)))
        t0, initial, n_changes, n_exec = init
        started = time.monotonic()
        for i in range(n):
            self._one(make_scenario(self.rng, i))
        rig.ready_for_next()
        t_end = time.monotonic()
        executed, motion, changes = rig.sim(lambda couch, plc: (
            list(couch.executed_commands[n_exec:]), list(couch.motion_log),
            list(plc.input_changes[n_changes:])))
        report = check(executed=executed, motion=[m for m in motion if m.t >= t0],
                       initial_inputs=initial, input_changes=changes,
                       injections=rig.injections, confirms=rig.console.confirms,
                       holds_sent=rig.console.holds_sent, t0=t0, t_end=t_end, timing=TIMING,
                       scenario_of=self.scenario_of)
        result = CampaignResult(report, n, t_end - started, dict(self.outcomes), self.stuck)
        bad = sorted({int(v.split()[1].rstrip(":")) for v in report.violations
                      if v.startswith("scenario ") and v.split()[1].rstrip(":").isdigit()})
        result.timelines = {k: self.timeline(k, executed, changes) for k in bad[:10]}
        return result

    def timeline(self, k: int, executed: list[Any], changes: list[Any]) -> list[str]:
        """Everything the device side saw in scenario k, ms from its start."""
        if not 0 <= k < len(self.starts):
            return []
        a = self.starts[k]
        b = self.starts[k + 1] if k + 1 < len(self.starts) else a + MAX_SCENARIO_S * 2
        ev: list[tuple[float, str]] = []
        ev += [(e.t, f"couch executed {e.kind} {e.details}") for e in executed if a <= e.t < b]
        ev += [(t, f"plc input {n}={v}") for t, n, v in changes if a <= t < b]
        ev += [(i.t, f"injected {i.kind} {i.value}") for i in self.rig.injections if a <= i.t < b]
        ev += [(s, f"confirm sent (answered +{(r - s) * 1e3:.1f} ms)")
               for s, r, _ in self.rig.console.confirms if a <= s < b]
        holds = [h for h in self.rig.console.holds_sent if a <= h < b]
        if holds:
            ev += [(holds[0], f"first hold ({len(holds)} sent)"), (holds[-1], "last hold")]
        return [f"{(t - a) * 1e3:8.1f} ms  {text}" for t, text in sorted(ev)]

    def _one(self, sc: Scenario) -> None:
        rig = self.rig
        rig.scenario = sc.index
        st = rig.ready_for_next()
        self.starts.append(time.monotonic())
        current = Pose.from_dict(st["couch"]["pose"])
        target = pick_target(self.rng, current, move_size_mm(self.rng, sc))
        prop = rig.propose_to(target, current)
        if prop["verdict"] != "needs_confirmation":
            self._count(f"skipped:{prop['verdict']}")
            return
        pid = prop["id"]
        rig.confirm(pid)
        holder: Holder | None = None
        let_go = False  # the console stopped holding (heartbeat loss)
        t_hold = time.monotonic() + max(0.0, -min((s.at for s in sc.steps), default=0.0))
        for step in sc.steps:
            if holder is None and not let_go and step.at >= 0:
                holder = self._start_holder(pid, t_hold)
            self._sleep_until(t_hold + step.at)
            if step.kind == "hold_stop":
                if holder is not None:
                    rig.console.hold_stops.append((holder.stop(), sc.index))
                holder, let_go = None, True
            else:
                rig.inject(step.kind, step.value)
        if holder is None and not let_go:
            holder = self._start_holder(pid, t_hold)
        state = self._settle(holder, sc)
        self._count(state)
        if sc.recover and state in ("STOPPED", "FAULT", "PROPOSED"):
            holder = self._recover(pid, holder, sc)
        if holder is not None:
            holder.stop()

    def _start_holder(self, pid: str, at: float) -> Holder:
        self._sleep_until(at)
        return self.rig.hold(pid)

    def _settle(self, holder: Holder | None, sc: Scenario) -> str:
        """Wait until the move is over one way or another, then a short dwell in which
        the console (if still holding) keeps holding: nothing may resume."""
        rig = self.rig
        deadline = time.monotonic() + MAX_SCENARIO_S
        quiet_at = time.monotonic() + 0.1
        while True:
            st = rig.status()
            state = st["state"]
            # CONFIRMED with nobody holding, or with the start refused for a while
            # (motion enable released, an arm out): the move is not going to start.
            waiting = state == "CONFIRMED" and (holder is None or time.monotonic() > quiet_at)
            if (state in SETTLED or waiting) and not rig.couch_moving():
                break
            if time.monotonic() > deadline:
                self.stuck.append(f"scenario {sc.index}: still {state} ({st['reason']}) "
                                  f"after {MAX_SCENARIO_S} s; families {sc.families}")
                break
            time.sleep(0.004)
        if self.rng.random() < 0.5:
            rig.restore_room()  # interlocks close again while the console still holds
        time.sleep(0.015)
        return state

    def _recover(self, pid: str, holder: Holder | None, sc: Scenario) -> Holder | None:
        """Reset, confirm afresh and finish: the one legitimate way to move again."""
        rig = self.rig
        if holder is not None and not sc.hold_through_reset:
            holder.stop()
            holder = None
        st = rig.ready_for_next()
        time.sleep(0.02)  # the old hold keeps arriving: it must not move anything
        prop = st.get("proposal") or {}
        if st["state"] != "PROPOSED" or prop.get("id") != pid:
            self._count("recover:not_offered")
            return holder
        rig.confirm(pid)
        if holder is None:
            holder = rig.hold(pid)
        state = self._settle(holder, sc)
        self._count(f"recover:{state}")
        return holder

    def _count(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    @staticmethod
    def _sleep_until(t: float) -> None:
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)


def run_campaign(rig: Rig, n: int, seed: int) -> CampaignResult:
    return Campaign(rig, seed).run(n)


def describe(result: CampaignResult) -> dict[str, Any]:
    from .invariants import summary

    return {"scenarios": result.scenarios, "seconds": round(result.seconds, 1),
            "outcomes": result.outcomes, "stuck": len(result.stuck),
            **summary(result.report)}


def run_parallel(rigs: list[Rig], n: int, seed: int) -> list[CampaignResult]:
    """n scenarios shared out over independent rooms (each its own igrtd and
    simulators), run side by side: the machine's second core would idle otherwise."""
    import threading

    results: list[CampaignResult | Exception | None] = [None] * len(rigs)
    share = [n // len(rigs) + (1 if k < n % len(rigs) else 0) for k in range(len(rigs))]

    def work(k: int) -> None:
        try:
            results[k] = Campaign(rigs[k], seed * 1000 + k).run(share[k])
        except Exception as exc:  # noqa: BLE001  (handed to the caller's thread, re-raised there)
            results[k] = exc

    threads = [threading.Thread(target=work, args=(k,), name=f"campaign-{k}")
               for k in range(len(rigs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = []
    for r in results:
        if isinstance(r, Exception):
            raise r
        assert r is not None
        out.append(r)
    return out
