"""Runs fault scenarios against one daemon and one simulated room, then checks
the invariants (tests/campaign/invariants.py) on the device-side records."""

from __future__ import annotations

import bisect
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safety.pose import Pose

from .invariants import Report, Timing, check, family_of
from .rig import (
    COUCH_HEARTBEAT_TIMEOUT_MS,
    HOLD_TIMEOUT_S,
    MAX_REGISTRATION_AGE_S,
    PLC_RECONNECT_MIN_S,
    PLC_STALE_S,
    POLICY,
    STATUS_PUSH_S,
    Holder,
    Observation,
    Rig,
)
from .scenarios import PLC_SCAN_S, Scenario, Step, make_scenario, move_size_mm, pick_target

log = logging.getLogger("campaign")

TIMING = Timing(plc_stale_s=PLC_STALE_S, plc_reconnect_min_s=PLC_RECONNECT_MIN_S,
                hold_timeout_s=HOLD_TIMEOUT_S,
                couch_heartbeat_timeout_s=COUCH_HEARTBEAT_TIMEOUT_MS / 1000.0,
                min_observable_s=PLC_SCAN_S - 0.001, couch_report_s=2 * STATUS_PUSH_S,
                confirm_shift_mm=POLICY.second_approval_shift_mm,
                confirm_rotation_deg=POLICY.second_approval_rotation_deg,
                approved_shift_mm=POLICY.refuse_shift_mm,
                approved_rotation_deg=POLICY.refuse_rotation_deg,
                imaging_tolerance_mm=POLICY.tolerance_translation_mm,
                imaging_tolerance_deg=POLICY.tolerance_rotation_deg,
                max_registration_age_s=MAX_REGISTRATION_AGE_S)
SETTLED = ("DONE", "STOPPED", "FAULT", "PROPOSED", "READY")
MAX_SCENARIO_S = 3.0
BATCH = 400  # scenarios checked together (well inside the couch's 100,000-sample log)


@dataclass
class CampaignResult:
    report: Report
    scenarios: int
    seconds: float
    outcomes: dict[str, int] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)
    timelines: dict[int, list[str]] = field(default_factory=dict)
    seed: int = 0  # the room's seed: scenario k replays with IGRT_CAMPAIGN_REPLAY=seed:k


def _merge(into: Report, part: Report) -> None:
    into.violations.extend(part.violations)
    into.gos += part.gos
    into.stops += part.stops
    into.moves_completed += part.moves_completed
    into.halts_checked += part.halts_checked
    for k, v in part.halt_latency_s.items():
        into.halt_latency_s.setdefault(k, []).extend(v)
    if part.closest_go_after_open_s is not None and (
            into.closest_go_after_open_s is None
            or part.closest_go_after_open_s < into.closest_go_after_open_s):
        into.closest_go_after_open_s = part.closest_go_after_open_s


class Campaign:
    """Scenarios on one rig. Scenario i of room seed S draws everything from
    random.Random(f"{S}/{i}"), so `IGRT_CAMPAIGN_REPLAY=S:i` replays it alone."""

    def __init__(self, rig: Rig, seed: int) -> None:
        self.rig = rig
        self.seed = seed
        self.rng = random.Random(seed)
        self.starts: list[float] = []
        self.indices: list[int] = []  # scenario index of each start
        self.outcomes: dict[str, int] = {}
        self.stuck: list[str] = []

    def scenario_of(self, t: float) -> int:
        k = bisect.bisect_right(self.starts, t) - 1
        return self.indices[k] if k >= 0 else -1

    # ------------------------------------------------------------------ run
    def run(self, n: int, indices: list[int] | None = None) -> CampaignResult:
        """Scenarios 0..n-1 (or `indices`), checked in batches of BATCH so that the
        simulators' bounded records (the couch's motion log) always cover a batch."""
        order = list(range(n)) if indices is None else list(indices)
        started = time.monotonic()
        report = Report()
        bad: list[int] = []
        fams_shown: set[str] = set()
        timelines: dict[int, list[str]] = {}
        for b in range(0, len(order), BATCH):
            part, executed, changes = self._batch(order[b:b + BATCH])
            _merge(report, part)
            # Timelines of the first scenario of each violation family, then of others.
            seen = set(fams_shown)
            for first_of_family in (True, False):
                for v in part.violations:
                    words = v.split()
                    if words[0] != "scenario" or not words[1].rstrip(":").lstrip("-").isdigit():
                        continue
                    k, fam = int(words[1].rstrip(":")), family_of(v)
                    if k in bad or len(bad) >= 16 or (first_of_family and fam in seen):
                        continue
                    seen.add(fam)
                    fams_shown.add(fam)
                    bad.append(k)
                    timelines[k] = self.timeline(k, executed, changes)
        result = CampaignResult(report, len(order), time.monotonic() - started,
                                dict(self.outcomes), self.stuck)
        result.timelines = timelines
        result.seed = self.seed
        return result

    def _batch(self, order: list[int]) -> tuple[Report, list[Any], list[Any]]:
        rig = self.rig
        rig.ready_for_next()
        t0, initial, n_changes, n_exec, pose0 = rig.sim("snapshot")
        wall_offset = time.time() - time.monotonic()
        for i in order:
            self.rng = random.Random(f"{self.seed}/{i}")
            self._one(make_scenario(self.rng, i))
        rig.ready_for_next()
        t_end = time.monotonic()
        executed, motion, changes, jumps = rig.sim("collect", n_exec, t0, n_changes)
        c = rig.console
        report = check(executed=executed, motion=motion,
                       initial_inputs=initial, input_changes=changes,
                       injections=[i for i in rig.injections if i.t >= t0],
                       confirms=[x for x in c.confirms if x[0] >= t0],
                       holds_sent=[h for h in c.holds_sent if h >= t0], t0=t0, t_end=t_end,
                       timing=TIMING, scenario_of=self.scenario_of,
                       approvals=[x for x in c.approvals if x[0] >= t0],
                       proposals=[p for p in c.proposals if p.t >= t0],
                       observations=[o for o in c.observations if o.t >= t0],
                       audit_fault_ts=audit_fault_times(rig.audit_dir, t0 + wall_offset - 1.0),
                       initial_pose=pose0, wall_offset=wall_offset, jump_reports=jumps)
        return report, executed, changes

    def timeline(self, k: int, executed: list[Any], changes: list[Any]) -> list[str]:
        """Everything the device side saw in scenario k, ms from its start."""
        if k not in self.indices:
            return []
        j = self.indices.index(k)
        a = self.starts[j]
        b = self.starts[j + 1] if j + 1 < len(self.starts) else a + MAX_SCENARIO_S * 2
        ev: list[tuple[float, str]] = []
        ev += [(e.t, f"couch executed {e.kind} {e.details}") for e in executed if a <= e.t < b]
        ev += [(t, f"plc input {n}={v}") for t, n, v in changes if a <= t < b]
        ev += [(i.t, f"injected {i.kind} {i.value}") for i in self.rig.injections if a <= i.t < b]
        c = self.rig.console
        ev += [(x[0], f"confirm sent (answered +{(x[1] - x[0]) * 1e3:.1f} ms)")
               for x in c.confirms if a <= x[0] < b]
        ev += [(x[0], f"approval by {x[3]} sent (answered +{(x[1] - x[0]) * 1e3:.1f} ms)")
               for x in c.approvals if a <= x[0] < b]
        ev += [(p.t, (f"proposed {p.proposal_id} ({p.verdict}); couch really at "
                      f"{p.pose_at_imaging}, request said {p.claimed_at_imaging}"))
               for p in c.proposals if a <= p.t < b]
        ev += [(o.t, f"room settled: {o.state} ({o.reason})") for o in c.observations
               if a <= o.t < b]
        holds = [h for h in self.rig.console.holds_sent if a <= h < b]
        if holds:
            ev += [(holds[0], f"first hold ({len(holds)} sent)"), (holds[-1], "last hold")]
        return [f"{(t - a) * 1e3:8.1f} ms  {text}" for t, text in sorted(ev)]

    def _one(self, sc: Scenario) -> None:
        rig = self.rig
        rig.scenario = sc.index
        st = rig.ready_for_next()
        self.starts.append(time.monotonic())
        self.indices.append(sc.index)
        current = Pose.from_dict(st["couch"]["pose"])  # what the room reports at imaging
        true_pose = rig.couch_pose()  # where the couch really is
        claimed, size = current, move_size_mm(self.rng, sc)
        if sc.propose_lie_mm is not None:  # issue 11 #2: couch_at_imaging is not the couch's
            axis, off = sc.propose_lie_mm
            d = current.as_dict()
            d[axis] += off
            claimed, size = Pose.from_dict(d), self.rng.uniform(2.0, 4.0)
        target = pick_target(self.rng, claimed, size, single_axis=sc.single_axis,
                             rotate=sc.rotate)
        prop = rig.try_propose_to(target, claimed, age_s=sc.registration_age_s,
                                  true_pose=true_pose)
        if prop is None:
            self._count("skipped:propose_refused")
            return
        if prop["verdict"] not in ("needs_confirmation", "needs_second_approval"):
            self._count(f"skipped:{prop['verdict']}")
            return
        pid = prop["id"]
        self._run_phase(sc.before_confirm)
        if not self._confirm_and_approve(pid, sc, "first"):
            return
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
        if sc.post:  # a runaway while nothing is commanded
            self._run_phase(sc.post)
            time.sleep(0.1)  # two status pushes and more: igrtd must have reacted
            state = self._settle(holder, sc, max_s=1.0)
            self._count(f"post:{state}")
        if sc.recover and state in ("STOPPED", "FAULT", "PROPOSED"):
            holder = self._recover(pid, holder, sc)
        elif sc.reapply and state == "DONE":
            holder = self._reapply(pid, holder, sc)
        if holder is not None:
            holder.stop()

    def _run_phase(self, steps: list[Step]) -> None:
        t = time.monotonic()
        for step in steps:
            self._sleep_until(t + step.at)
            self.rig.inject(step.kind, step.value)

    def _confirm_and_approve(self, pid: str, sc: Scenario, phase: str) -> bool:
        """Confirm as the therapist; when the verdict needs it, a second person
        approves (sometimes the confirmer tries first: the two-person rule)."""
        rig = self.rig
        reply = rig.try_confirm(pid)
        if not reply["ok"]:
            self._count(f"{phase}:confirm_refused")
            return False
        if reply["result"].get("status") != "awaiting_approval":
            return True
        if sc.self_approval:
            own = rig.try_approve(pid, as_confirmer=True)
            self._count(f"{phase}:self_approval_{'accepted' if own['ok'] else 'refused'}")
            if own["ok"]:
                return True
        reply = rig.try_approve(pid)
        if not reply["ok"]:
            self._count(f"{phase}:approval_refused")
            return False
        return True

    def _start_holder(self, pid: str, at: float) -> Holder:
        self._sleep_until(at)
        return self.rig.hold(pid)

    def _settle(self, holder: Holder | None, sc: Scenario, max_s: float = MAX_SCENARIO_S) -> str:
        """Wait until the move is over one way or another, then a short dwell in which
        the console (if still holding) keeps holding: nothing may resume."""
        rig = self.rig
        if "runaway" in sc.families:
            max_s = min(max_s, 1.5)  # an unstopped runaway would otherwise run for 3 s
        deadline = time.monotonic() + max_s
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
                                  f"after {max_s} s; families {sc.families}")
                break
            time.sleep(0.01)  # each poll is a request igrtd must serve: not faster
        rig.console.observations.append(Observation(time.monotonic(), sc.index, state,
                                                    str(st.get("reason"))))
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
        if not self._confirm_and_approve(pid, sc, "recover"):
            return holder
        if holder is None:
            holder = rig.hold(pid)
        state = self._settle(holder, sc)
        self._count(f"recover:{state}")
        return holder

    def _reapply(self, pid: str, holder: Holder | None, sc: Scenario) -> Holder | None:
        """The move is DONE: try to apply the same proposal again (it must be refused)."""
        rig = self.rig
        if holder is not None:
            holder.stop()
        if not self._confirm_and_approve(pid, sc, "reapply"):
            return None
        self._count("reapply:confirmed")
        holder = rig.hold(pid)
        time.sleep(0.1)
        state = self._settle(holder, sc)
        self._count(f"reapply:{state}")
        return holder

    def _count(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    @staticmethod
    def _sleep_until(t: float) -> None:
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)


class AuditFaultTail:
    """igrtd's `fault` audit records, read incrementally: each batch reads only
    the lines appended since the previous batch. Reading the whole log every
    batch made `make campaign` quadratic (the log grows to tens of MB)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.times: list[float] = []

    def since(self, t: float) -> list[float]:
        from daemon.audit import list_segments, parse_line

        for _, path in list_segments(self.directory):
            start = self.offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(start)
                data = f.read()
            end = data.rfind(b"\n") + 1  # only whole lines; a torn one is read next time
            for raw in data[:end].splitlines():
                # igrtd writes compact JSON: only these lines can be fault records.
                if b'"event":"fault"' in raw:
                    rec = parse_line(raw)
                    if rec.event == "fault":
                        self.times.append(rec.ts)
            self.offsets[path] = start + end
        return [x for x in self.times if x >= t]


_FAULT_TAILS: dict[Path, AuditFaultTail] = {}


def audit_fault_times(directory: Path, since: float) -> list[float]:
    """UNIX times of igrtd's `fault` audit records at or after `since`."""
    tail = _FAULT_TAILS.setdefault(directory, AuditFaultTail(directory))
    return tail.since(since)


def run_campaign(rig: Rig, n: int, seed: int) -> CampaignResult:
    return Campaign(rig, seed).run(n)


def describe(result: CampaignResult) -> dict[str, Any]:
    from .invariants import families, summary

    return {"seed": result.seed, "scenarios": result.scenarios,
            "seconds": round(result.seconds, 1), "outcomes": result.outcomes,
            "stuck": len(result.stuck), **summary(result.report),
            "violation_families": families(result.report, result.seed)}


def run_parallel(rigs: list[Rig], n: int, seed: int) -> list[CampaignResult]:
    """n scenarios shared out over independent rooms (each its own igrtd and
    simulators), run side by side: the machine's second core would idle otherwise."""
    share = [n // len(rigs) + (1 if k < n % len(rigs) else 0) for k in range(len(rigs))]
    return _in_threads([(rigs[k], seed * 1000 + k, list(range(share[k])))
                        for k in range(len(rigs))])


def run_replay(rig: Rig, room_seed: int, indices: list[int]) -> CampaignResult:
    """Scenarios `indices` of the room with seed `room_seed`, alone, on one rig."""
    return Campaign(rig, room_seed).run(len(indices), indices)


def _in_threads(jobs: list[tuple[Rig, int, list[int]]]) -> list[CampaignResult]:
    import threading

    results: list[CampaignResult | Exception | None] = [None] * len(jobs)

    def work(k: int) -> None:
        rig, room_seed, indices = jobs[k]
        try:
            results[k] = Campaign(rig, room_seed).run(len(indices), indices)
        except Exception as exc:  # noqa: BLE001  (handed to the caller's thread, re-raised there)
            results[k] = exc

    threads = [threading.Thread(target=work, args=(k,), name=f"campaign-{k}")
               for k in range(len(jobs))]
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
