"""The fault campaign's invariants, checked on the device side of the wires.

Inputs are plain records: what the couch simulator executed (`Executed`:
t, kind, details) and its motion log, what the PLC simulator put on the wire
(`input_changes`), and what the rig injected and the console sent. All times
are `time.monotonic()` of the test process, which the simulators share.

From them the checker rebuilds *open windows*: intervals during which motion
is not permitted, each with the time igrtd is allowed to need to notice:

- an interlock input open (door, e-stop chain, collision pads, motion enable,
  an imager arm not parked, an arm moving), from the PLC simulator's own
  record of its wire image;
- the PLC heartbeat frozen: open from freeze + heartbeat_stale_s (only then
  can any host know) until it runs again;
- the PLC connection dropped: open from the drop for the reconnect back-off
  (no host can have a fresh link before reconnecting);
- PLC answers delayed beyond heartbeat_stale_s: open from set + stale;
- hold-to-run: open from the last console `hold` + hold_timeout_s until the
  console holds again.

Invariants (each violation is one line naming scenario, time and reason):

1. GATING: no GO (or JOG) is executed while a window has been open for
   longer than its reaction allowance.
2. FRESH CONFIRMATION: every GO is matched to its own accepted confirmation,
   sent before the GO (a confirmation that lands while hold-to-run is held
   starts the move before its reply is out) and after the most recent STOP or
   FAULT the couch executed; no confirmation is used by two GOs; JOG never happens (the
   campaign never asks for one).
3. HALTING: when a window opens while the couch is executing a move, the move
   ends (STOP or FAULT executed, or natural arrival) within the halt bound.
   For serial silence, where no STOP can cross the wire, the controller's own
   heartbeat watchdog must fault it within its timeout plus the halt bound.
   Windows also open for a non-zero PLC fault code and for a PLC status
   register forced outside the documented map (a value the host cannot vouch
   for reads as open), and interlock openings as short as one PLC scan count.
4. TRAVEL TIER: the travel of every GO, measured from the couch's *actual*
   pose when the GO executed (the simulator's own pose, not igrtd's), and the
   couch's excursion from its pose at imaging during the move, stay within
   the tier the people actually approved: the confirmation tier (5 mm / 2 deg)
   unless an accepted second approval by another person than the confirmer
   was sent after that confirmation and before the GO, then the refusal
   limits (30 mm / 5 deg).
5. NOT MOVED SINCE IMAGING: when a GO executes, the couch is where it was
   imaged for that proposal, or on that proposal's own way to its target
   (each axis between its imaged value and its target, within the clinical
   tolerance 1 mm / 0.5 deg): a correction is never applied from elsewhere.
6. NOTHING STALE: no GO for a registration older than
   `max_registration_age_s` when the GO executes.
7. AT MOST ONCE: after a proposal's move arrived, no GO for it moves the
   couch again, and once the room reported DONE for it, no GO for it at all.
8. RUNAWAY / POSITION JUMP: uncommanded motion (a runaway) or a reported
   pose jump during a move (still commanded when a STATUS carrying the jump
   reached the wire intact: a jump made while the line is cut is judged from
   when the line is back) ends in STOP or FAULT executed by the couch within
   two status pushes plus the halt bound; the room is FAULT when the scenario
   settles (latched); igrtd wrote a `fault` audit record; and the couch
   executes no GO after it before it executed a RESET. What no host can know
   sooner extends the bound, never the rule: a runaway during a commanded move
   counts from when its axis left that move's path by more than igrtd's path
   tolerance; while the serial line is cut, from when the line is back (or the
   controller's own watchdog, unless it already faulted). A runaway that begins
   while the line is cut, and either ended by the couch's watchdog before the
   line is back or begun while a commanded move was running (igrtd cannot tell
   it from that move's end), must halt and be RESET before any GO, but igrtd's
   own FAULT and audit are not required.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safety.pose import ROTATION_AXES, TRANSLATION_AXES, Pose

INTERLOCK_INPUTS = (
    "door_closed", "estop_chain_ok", "collision_pads_clear", "motion_enable_pressed",
    "imager_kv_source_parked", "imager_detector_parked",
)
MOVING_BITS = ("imager_kv_source_moving", "imager_detector_moving")


@dataclass(frozen=True)
class Timing:
    """The bounds the invariants use (seconds)."""

    plc_stale_s: float = 0.1
    plc_reconnect_min_s: float = 0.05
    hold_timeout_s: float = 0.25
    couch_heartbeat_timeout_s: float = 0.25
    # GO gating: how long an opening may take to reach igrtd's decision (PLC
    # poll interval, one loop iteration on each side, the GO frame on the pty)
    # before a GO counts as executed "with the interlock open".
    reaction_s: float = 0.03
    # HALTING: from a window opening to the end of the commanded move.
    halt_s: float = 0.05
    # The shortest opening that must stop a move: one PLC scan (10 ms) less
    # 1 ms of timer granularity. The host polls every 3 ms, so a one-scan pulse
    # spans at least three polls (issue 11: pulses down to a single PLC scan).
    min_observable_s: float = 0.009
    # How long igrtd may need to learn of the couch's own misbehaviour
    # (runaway, pose jump): two STATUS pushes of the controller (20 ms each).
    couch_report_s: float = 0.04
    # Travel tiers (safety.policy.VerdictPolicy defaults) and their slack.
    confirm_shift_mm: float = 5.0
    confirm_rotation_deg: float = 2.0
    approved_shift_mm: float = 30.0
    approved_rotation_deg: float = 5.0
    travel_slack_mm: float = 0.5  # arrival tolerance: overshoot, reported noise
    travel_slack_deg: float = 0.2
    # Clinical tolerance (below it the couch has not "moved since imaging").
    imaging_tolerance_mm: float = 1.0
    imaging_tolerance_deg: float = 0.5
    # igrtd's commanded-path tolerance (config motion.path_tolerance_*): a runaway
    # during a move is evidence only once its axis leaves the path by this much.
    path_tolerance_mm: float = 1.0
    path_tolerance_deg: float = 0.2
    max_registration_age_s: float = 1800.0
    # A latched FAULT must be audited within this of the runaway / jump.
    audit_within_s: float = 3.0


@dataclass(frozen=True)
class Window:
    start: float  # when igrtd could first know (after any unavoidable detection delay)
    end: float  # math.inf if never closed
    reason: str
    allowance: float  # extra reaction allowance (injected PLC answer delay)
    kind: str  # "plc" (reached through the PLC), "hold", "silence"
    category: str = ""  # for the latency figures: input name, plc_link, hold, silence
    origin: float | None = None  # the fault itself, when igrtd may notice before `start`


@dataclass
class MoveSpan:
    go_t: float
    end_t: float
    ended_by: str  # STOP / FAULT / arrived / open


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    gos: int = 0
    stops: int = 0
    moves_completed: int = 0
    halts_checked: int = 0
    halt_latency_s: dict[str, list[float]] = field(default_factory=dict)
    closest_go_after_open_s: float | None = None

    def add(self, text: str) -> None:
        self.violations.append(text)


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]


def summary(rep: Report) -> dict[str, Any]:
    lat = {k: {"n": len(v), "p50_ms": round(_pct(v, 0.5) * 1e3, 1),
               "p99_ms": round(_pct(v, 0.99) * 1e3, 1), "max_ms": round(max(v) * 1e3, 1)}
           for k, v in sorted(rep.halt_latency_s.items()) if v}
    return {"violations": len(rep.violations), "gos": rep.gos, "stops": rep.stops,
            "moves_completed": rep.moves_completed, "halts_checked": rep.halts_checked,
            "closest_go_after_open_ms": None if rep.closest_go_after_open_s is None
            else round(rep.closest_go_after_open_s * 1e3, 1),
            "halt_latency": lat}


# Violation families, for the summary: (family, a phrase every such line contains).
_FAMILY_MARKS: tuple[tuple[str, str], ...] = (
    ("runaway not stopped", "runaway"),  # refined below
    ("pose jump", "pose_jump"),
    ("travel beyond the approved tier", " travels "),
    ("travel beyond the approved tier", "from its pose at imaging"),
    ("couch moved since imaging", "not where it was imaged"),
    ("stale registration", "registration "),
    ("applied twice", "applies proposal"),
    ("GO without a fresh confirmation", "without a confirmation"),
    ("JOG", "JOG executed"),
)


def family_of(violation: str) -> str:
    """A short family name for one violation line (its second word is the scenario)."""
    for name, mark in _FAMILY_MARKS:
        if mark in violation:
            if name in ("runaway not stopped", "pose jump"):
                kind = "runaway" if mark == "runaway" else "pose jump"
                if "no STOP/FAULT" in violation:
                    return f"{kind}: not stopped in time"
                if "settled in" in violation:
                    return f"{kind}: no latched FAULT"
                if "audit" in violation:
                    return f"{kind}: no audit record"
                return f"{kind}: GO without a reset"
            return name
    body = violation.split(": ", 1)[-1]
    what = body.split(" at ")[0] if "during a move" in body else body.split(" while ")[-1]
    what = what.split(" for ")[0].split(" (")[0]
    for generic in ("PLC fault code", "PLC register", "PLC answers"):
        if what.startswith(generic):
            what = generic
    return ("no stop in time: " if "during a move" in body else "GO while open: ") + what


def families(rep: Report, seed: int) -> dict[str, dict[str, Any]]:
    """{family: {"n": count, "replay": "<seed>:<scenario>" of the first one}}."""
    out: dict[str, dict[str, Any]] = {}
    for v in rep.violations:
        f = out.setdefault(family_of(v), {"n": 0, "replay": f"{seed}:{v.split()[1].rstrip(':')}",
                                          "example": v})
        f["n"] += 1
    return out


# ---------------------------------------------------------------- windows
def _input_windows(initial: dict[str, bool], changes: Iterable[tuple[float, str, bool]],
                   t0: float) -> list[tuple[float, float, str]]:
    """(start, end, name) for every interval an interlock input was open or an arm moved."""
    unsafe_since: dict[str, float] = {}

    def unsafe(name: str, value: bool) -> bool:
        return (name in INTERLOCK_INPUTS and not value) or (name in MOVING_BITS and value)

    for name, value in initial.items():
        if unsafe(name, value):
            unsafe_since[name] = t0
    out = []
    for t, name, value in changes:
        if name not in INTERLOCK_INPUTS and name not in MOVING_BITS:
            continue
        if unsafe(name, value):
            unsafe_since.setdefault(name, t)
        elif name in unsafe_since:
            out.append((unsafe_since.pop(name), t, name))
    out.extend((s, float("inf"), n) for n, s in unsafe_since.items())
    return out


def _paired(injections: Sequence[Any], kind: str, on: Any) -> list[tuple[float, float, Any]]:
    """(on_t, off_t, value) spans of a set/clear injection; 'restore' clears everything."""
    out = []
    since: tuple[float, Any] | None = None
    for inj in injections:
        if inj.kind == kind and on(inj.value):
            if since is None:
                since = (inj.t, inj.value)
            else:  # a new value while on: close the old span, open a new one
                out.append((since[0], inj.t, since[1]))
                since = (inj.t, inj.value)
        elif since is not None and (inj.kind == "restore" or inj.kind == kind):
            out.append((since[0], inj.t, since[1]))
            since = None
    if since is not None:
        out.append((since[0], float("inf"), since[1]))
    return out


def _forced_registers(injections: Sequence[Any]) -> list[tuple[float, float, tuple[int, int]]]:
    """(on_t, off_t, (address, value)) while a PLC status register was forced."""
    out: list[tuple[float, float, tuple[int, int]]] = []
    since: dict[int, tuple[float, int]] = {}
    for inj in injections:
        if inj.kind == "restore":
            out.extend((t, inj.t, (a, v)) for a, (t, v) in since.items())
            since.clear()
        elif inj.kind == "plc_raw_register" and isinstance(inj.value, tuple):
            addr, raw = inj.value
            if addr in since:
                t, v = since.pop(addr)
                out.append((t, inj.t, (addr, v)))
            if raw is not None:
                since[addr] = (inj.t, raw)
    out.extend((t, float("inf"), (a, v)) for a, (t, v) in since.items())
    return out


def plc_delay_at(injections: Sequence[Any], t: float, reaction_s: float = 0.0) -> float:
    d = 0.0
    for a, b, v in _paired(injections, "plc_delay", lambda v: float(v) > 0):
        # Answers in flight when cleared still arrive late; a delay set within the
        # reaction time after t delays the first answers that could show t's change.
        if a <= t + reaction_s and t < b + float(v):
            d = max(d, float(v))
    return d


def windows(initial: dict[str, bool], changes: Sequence[tuple[float, str, bool]],
            injections: Sequence[Any], holds_sent: Sequence[float], t0: float,
            timing: Timing) -> list[Window]:
    out: list[Window] = []
    for s, e, name in _input_windows(initial, changes, t0):
        out.append(Window(s, e, f"{name} open" if name in INTERLOCK_INPUTS else name,
                          plc_delay_at(injections, s, timing.reaction_s), "plc", name))
    for a, b, _ in _paired(injections, "plc_heartbeat_frozen", bool):
        if b - a > timing.plc_stale_s:
            out.append(Window(a + timing.plc_stale_s, b, "PLC heartbeat frozen", 0.0, "plc",
                              "plc_heartbeat", origin=a))
    for inj in injections:
        if inj.kind == "plc_drop" and inj.value:  # value: connections it closed
            out.append(Window(inj.t, inj.t + timing.plc_reconnect_min_s,
                              "PLC connection dropped", 0.0, "plc", "plc_drop"))
        if inj.kind == "couch_silence":
            out.append(Window(inj.t, inj.t + float(inj.value), "couch serial silent",
                              0.0, "silence", "couch_silence"))
    for a, b, v in _paired(injections, "plc_delay", lambda v: float(v) > 0):
        if float(v) >= timing.plc_stale_s and b - a > timing.plc_stale_s:
            out.append(Window(a + timing.plc_stale_s, b, f"PLC answers {v * 1e3:.0f} ms late",
                              0.0, "plc", "plc_delay", origin=a))
    for a, b, v in _paired(injections, "plc_fault_code", lambda v: int(v) != 0):
        out.append(Window(a, b, f"PLC fault code {int(v)}",
                          plc_delay_at(injections, a, timing.reaction_s), "plc", "plc_fault_code"))
    for a, b, (addr, raw) in _forced_registers(injections):
        out.append(Window(a, b, f"PLC register {addr} forced to {raw} (outside the map)",
                          plc_delay_at(injections, a, timing.reaction_s), "plc", "plc_raw_register"))
    hs = sorted(holds_sent)
    for h, nxt in zip(hs, hs[1:] + [float("inf")]):
        if nxt - h > timing.hold_timeout_s:
            out.append(Window(h + timing.hold_timeout_s, nxt, "hold-to-run heartbeat lost",
                              0.0, "hold", "hold"))
    if hs:  # before the first hold ever sent, no hold-to-run
        out.append(Window(t0, hs[0], "hold-to-run never held", 0.0, "hold", "hold"))
    return out


# ---------------------------------------------------------------- moves
def move_spans(executed: Sequence[Any], motion: Sequence[Any]) -> list[MoveSpan]:
    """Each GO until the move was ended: STOP/FAULT executed, or the axes arrived."""
    spans = []
    motion = list(motion)
    mt = [m.t for m in motion]
    for i, e in enumerate(executed):
        if e.kind not in ("GO", "JOG"):
            continue
        end_t, by = float("inf"), "open"
        for f in executed[i + 1:]:
            if f.kind in ("STOP", "FAULT", "GO", "JOG"):
                end_t, by = f.t, f.kind
                break
        # Natural arrival: the first motion sample after GO with every axis idle.
        j = bisect.bisect_right(mt, e.t)
        before = motion[j - 1].pose if j > 0 else None
        target = e.details.get("target") if e.kind == "GO" else None
        if before is not None and target is not None and all(
                abs(before.as_dict()[a] - v) < 1e-3 for a, v in target.items()):
            spans.append(MoveSpan(e.t, e.t, "arrived"))  # already there: nothing moved
            continue
        while j < len(motion) and motion[j].t < end_t:
            if not any(motion[j].moving):
                end_t, by = motion[j].t, "arrived"
                break
            j += 1
        spans.append(MoveSpan(e.t, end_t, by))
    return spans


def halt_deadline(start: float, deadline: float, silences: Sequence[tuple[float, float]],
                  timing: Timing) -> float:
    """While the serial line is silent no STOP can reach the couch: the move must
    end when the line is back (igrtd STOPs again) or when the controller's own
    heartbeat watchdog faults it, whichever comes first, plus the halt bound."""
    changed = True
    while changed:
        changed = False
        for a, b in silences:
            if a <= deadline and b > start:
                d = min(b, a + timing.couch_heartbeat_timeout_s) + timing.halt_s
                if d > deadline:
                    deadline, changed = d, True
    return deadline


# ---------------------------------------------------------------- check
def check(
    *,
    executed: Sequence[Any],
    motion: Sequence[Any],
    initial_inputs: dict[str, bool],
    input_changes: Sequence[tuple[float, str, bool]],
    injections: Sequence[Any],
    confirms: Sequence[tuple[float, float, int] | tuple[float, float, int, str]],
    holds_sent: Sequence[float],
    t0: float,
    t_end: float,
    timing: Timing,
    scenario_of: Any = lambda t: -1,
    approvals: Sequence[tuple[float, float, int, str]] = (),
    proposals: Sequence[Any] = (),
    observations: Sequence[Any] = (),
    audit_fault_ts: Sequence[float] = (),
    initial_pose: Pose | None = None,
    wall_offset: float = 0.0,
    jump_reports: Sequence[float] | None = None,
) -> Report:
    """Every violation of the invariants in the module docstring.

    `proposals` (rig.ProposalRecord), `approvals` and `observations`
    (rig.Observation) are the console's records; `audit_fault_ts` the UNIX times
    of igrtd's `fault` audit records; `wall_offset` turns the shared monotonic
    clock into UNIX time. `jump_reports` are the times a STATUS carrying an
    injected pose jump reached the wire (the couch simulator's record); None:
    at the injection."""
    rep = Report()
    wins = windows(initial_inputs, input_changes, injections, holds_sent, t0, timing)
    spans = move_spans(executed, motion)
    rep.gos = sum(1 for e in executed if e.kind == "GO")
    rep.stops = sum(1 for e in executed if e.kind == "STOP")
    rep.moves_completed = sum(1 for s in spans if s.ended_by == "arrived")

    # 1. gating
    for e in executed:
        if e.kind == "JOG":
            rep.add(f"scenario {scenario_of(e.t)}: JOG executed at {e.t - t0:.3f} s; "
                    "the campaign never asked for one")
        if e.kind != "GO":
            continue
        for w in wins:
            if w.kind == "silence" or not (w.start <= e.t < w.end):
                continue
            since = e.t - w.start
            if rep.closest_go_after_open_s is None or since < rep.closest_go_after_open_s:
                rep.closest_go_after_open_s = since
            if since >= timing.reaction_s + w.allowance:
                rep.add(f"scenario {scenario_of(e.t)}: GO executed at {e.t - t0:.3f} s while "
                        f"{w.reason} for {since * 1e3:.1f} ms (allowance "
                        f"{(timing.reaction_s + w.allowance) * 1e3:.0f} ms)")

    # 2. fresh confirmation, one GO each
    stop_times = [e.t for e in executed if e.kind in ("STOP", "FAULT")]
    used: set[int] = set()
    go_confirmation: dict[float, int] = {}  # GO time -> index into confirms
    for e in executed:
        if e.kind != "GO":
            continue
        k = bisect.bisect_left(stop_times, e.t)
        last_stop = stop_times[k - 1] if k else float("-inf")
        eligible = [i for i, c in enumerate(confirms)
                    if c[0] > last_stop and c[0] < e.t and i not in used]
        if not eligible:
            rep.add(f"scenario {scenario_of(e.t)}: GO executed at {e.t - t0:.3f} s without a "
                    f"confirmation of its own issued after the last STOP/FAULT "
                    f"({(e.t - last_stop) * 1e3:.1f} ms before)")
            continue
        used.add(eligible[-1])
        go_confirmation[e.t] = eligible[-1]

    # 3. halting
    silences = [(w.start, w.end) for w in wins if w.kind == "silence"]
    for w in wins:
        if w.end - w.start < timing.min_observable_s:
            continue
        origin = w.start if w.origin is None else w.origin
        for s in spans:
            # Moving when the fault happened and not yet ended at the fault's own time.
            if not (s.go_t <= origin < s.end_t):
                continue
            if w.kind == "silence":
                if w.end - w.start <= timing.couch_heartbeat_timeout_s:
                    continue
                bound = timing.couch_heartbeat_timeout_s + timing.halt_s
            else:
                bound = timing.halt_s + w.allowance
            deadline = halt_deadline(w.start, w.start + bound, silences, timing)
            # Openings whose STOP had to wait for a silent serial line are counted apart.
            category = w.category if deadline == w.start + bound else "during_couch_silence"
            bound = deadline - w.start
            rep.halts_checked += 1
            latency = max(0.0, s.end_t - w.start)  # 0: ended before the bound started
            rep.halt_latency_s.setdefault(category, []).append(latency)
            if latency > bound and w.start + bound < t_end:
                rep.add(f"scenario {scenario_of(w.start)}: {w.reason} at {w.start - t0:.3f} s "
                        f"during a move; move ended ({s.ended_by}) only after "
                        f"{latency * 1e3:.1f} ms (bound {bound * 1e3:.0f} ms)")

    pose_at = pose_timeline(motion, injections, initial_pose)
    gos = [e for e in executed if e.kind == "GO"]
    span_of = {s.go_t: s for s in spans}
    prop_times = [p.t for p in proposals]
    motion_times = [m.t for m in motion]

    def proposal_for(t: float) -> Any:
        k = bisect.bisect_right(prop_times, t)
        return proposals[k - 1] if k else None

    arrived_for: dict[str, float] = {}  # proposal id -> when its move arrived
    for e in gos:
        where = f"scenario {scenario_of(e.t)}: GO at {e.t - t0:.3f} s"
        p = proposal_for(e.t)
        before = pose_at(e.t)
        target = e.details.get("target")
        if p is None or before is None or not isinstance(target, dict):
            continue
        tgt = Pose.from_dict(target)
        # 7. at most once: after its move arrived, a proposal moves nothing again, and
        # once the room said DONE for it, it is not even sent again.
        if p.proposal_id in arrived_for:
            arrived = arrived_for[p.proposal_id]
            moves, _, turns = _travel(before, tgt)
            done = [o for o in observations if arrived <= o.t <= e.t
                    and o.scenario == p.scenario and o.state == "DONE"]
            if done or moves > timing.imaging_tolerance_mm or turns > timing.imaging_tolerance_deg:
                why = (f"after the room reported DONE at {done[0].t - t0:.3f} s" if done
                       else f"moving the couch {moves:.1f} mm / {turns:.2f} deg")
                rep.add(f"{where} applies proposal {p.proposal_id} again {why}; its move "
                        f"arrived at {arrived - t0:.3f} s (a confirmed correction applies "
                        "at most once)")
        span = span_of.get(e.t)
        if span is not None and span.ended_by == "arrived":
            arrived_for.setdefault(p.proposal_id, span.end_t)
        # 6. nothing stale
        age = e.t + wall_offset - p.acquired_at
        if not age <= timing.max_registration_age_s:
            rep.add(f"{where} for a registration {age:.0f} s old (limit "
                    f"{timing.max_registration_age_s:.0f} s)")
        # 4. travel within the approved tier
        ci = go_confirmation.get(e.t)
        approved = ci is not None and any(
            user != _confirmer(confirms[ci])
            and confirms[ci][0] < sent < e.t and scenario == confirms[ci][2]
            for sent, _, scenario, user in approvals)
        lim_mm = timing.approved_shift_mm if approved else timing.confirm_shift_mm
        lim_deg = timing.approved_rotation_deg if approved else timing.confirm_rotation_deg
        tier = "second approval" if approved else "confirmation without a second approval"
        shift, rot_axis, rot = _travel(before, tgt)
        if shift > lim_mm + timing.travel_slack_mm or rot > lim_deg + timing.travel_slack_deg:
            rep.add(f"{where} travels {shift:.1f} mm / {rot_axis} {rot:.2f} deg from the couch's "
                    f"actual pose; the {tier} allows {lim_mm:g} mm / {lim_deg:g} deg "
                    f"(proposal {p.proposal_id}, verdict {p.verdict})")
        elif span is not None:
            cut = min([i.t for i in injections if i.kind in ("runaway", "pose_jump", "set_pose")
                       and span.go_t <= i.t < span.end_t], default=span.end_t)
            far, far_axis, far_rot = 0.0, "", 0.0
            for m in motion[bisect.bisect_right(motion_times, span.go_t):]:
                if m.t > cut:
                    break
                sh, ax, r = _travel(p.pose_at_imaging, m.pose)
                far, far_axis, far_rot = max((far, far_axis, far_rot), (sh, ax, r))
            if far > lim_mm + timing.travel_slack_mm or far_rot > lim_deg + timing.travel_slack_deg:
                rep.add(f"{where}: the couch went {far:.1f} mm / {far_axis} {far_rot:.2f} deg "
                        f"from its pose at imaging; the {tier} allows {lim_mm:g} mm / "
                        f"{lim_deg:g} deg")
        # 5. not moved since imaging (or on this proposal's own way to its target)
        off = _outside_path(before, p.pose_at_imaging, tgt, timing)
        if off:
            rep.add(f"{where} although the couch is not where it was imaged for proposal "
                    f"{p.proposal_id} nor on its way to the target: {off}")

    # 8. runaway / position jump: stop, latch FAULT, audit, reset before any GO
    silences = [(w.start, w.end) for w in wins if w.kind == "silence"]
    resets = [e.t for e in executed if e.kind == "RESET"]
    halts = [e.t for e in executed if e.kind in ("STOP", "FAULT")]
    obs_times = [o.t for o in observations]
    audits = sorted(audit_fault_ts)
    restores = sorted(i.t for i in injections if i.kind == "restore")
    faults = [e.t for e in executed if e.kind == "FAULT"]

    def off_path_at(inj: Any) -> float:
        """When a runaway during a commanded move first took its axis outside that
        move's path by more than igrtd's path tolerance: before then the motion
        is indistinguishable from the move (a slow runaway on an axis the move
        also drives, or within the tolerance). inj.t if no move was running."""
        axis = str(inj.value[0])
        move = [sp for sp in spans if sp.go_t <= inj.t < sp.end_t]
        go = [e for e in gos if move and e.t == move[0].go_t]
        before = pose_at(move[0].go_t) if move else None
        target = go[0].details.get("target") if go else None
        if before is None or not isinstance(target, dict):
            return inj.t
        lo, hi = sorted((before.get(axis), float(target[axis])))
        tol = (timing.path_tolerance_deg if axis in ROTATION_AXES
               else timing.path_tolerance_mm)
        k = bisect.bisect_left(motion_times, inj.t)
        for m in motion[k:]:
            v = m.pose.get(axis)
            if not lo - tol <= v <= hi + tol:
                return float(m.t)
        return math.inf

    def faulted_at(t: float) -> bool:
        """The couch controller is in FAULT at t (faulted, no RESET executed since)."""
        f = bisect.bisect_left(faults, t)
        r = bisect.bisect_left(resets, t)
        return f > 0 and (r == 0 or resets[r - 1] < faults[f - 1])
    for inj in injections:
        if inj.kind not in ("runaway", "pose_jump") or inj.value == "unavailable":
            continue
        # A jump shows in the next STATUS pushed that reaches the wire intact (every
        # couch_report_s / 2 while moving; once the line is back after a silence):
        # it is judged from then, when the move was still commanded then, not if a
        # STOP beat it, nor if it never reached the host before the room was restored.
        start = inj.t
        if inj.kind == "pose_jump":
            seen_t = inj.t + timing.couch_report_s / 2
            if jump_reports is not None:
                r = bisect.bisect_left(restores, inj.t)
                until = restores[r] if r < len(restores) else math.inf
                shown = [x for x in jump_reports if inj.t <= x < until][:1]
                if not shown:
                    continue
                seen_t = start = shown[0]
            if not any(s.go_t <= inj.t and seen_t < s.end_t for s in spans):
                continue
        where = f"scenario {inj.scenario}: {inj.kind} {inj.value} at {inj.t - t0:.3f} s"
        if start > inj.t:
            where += f" (on the wire at {start - t0:.3f} s)"
        bound = timing.couch_report_s + timing.halt_s
        deadline = halt_deadline(start, start + bound, silences, timing)
        if inj.kind == "runaway":
            deadline = max(deadline, off_path_at(inj) + bound)
        cut = [(a, b) for a, b in silences if a <= start < b]
        if cut and faulted_at(start):
            # A controller already in FAULT has no watchdog left to trip: only igrtd's
            # STOP ends the motion, once the line is back.
            deadline = max(deadline, cut[0][1] + timing.halt_s)
        k = bisect.bisect_left(halts, inj.t)
        first_halt = halts[k] if k < len(halts) else float("inf")
        rep.halts_checked += 1
        rep.halt_latency_s.setdefault(inj.kind, []).append(first_halt - start)
        if first_halt > deadline and deadline < t_end:
            rep.add(f"{where}: the couch executed no STOP/FAULT within "
                    f"{(deadline - start) * 1e3:.0f} ms (first after "
                    f"{(first_halt - start) * 1e3:.0f} ms)")
        later_gos = [e.t for e in gos if e.t > start]
        if later_gos and not any(inj.t < r < later_gos[0] for r in resets):
            rep.add(f"{where}: GO executed at {later_gos[0] - t0:.3f} s without a RESET "
                    "of the couch in between (not latched)")
        # A runaway that begins while the serial line is cut reaches igrtd as a
        # runaway only if igrtd saw the couch at rest (or giving up its commanded
        # move) before the cut and the motion is still going when the line is back.
        # If the couch's own watchdog ended it first, igrtd finds a faulted
        # controller (heartbeat lost) that needs a RESET; if the line was cut while
        # a commanded move ran, the motion looks like that move's end and igrtd
        # STOPs it. Either way the couch-moved-since-imaging rule refuses any GO
        # from where the runaway left it (invariant 5), and halting and the RESET
        # before any GO are checked above; igrtd's own FAULT and audit are not.
        if inj.kind == "runaway" and cut and (
                first_halt < cut[0][1]
                or any(sp.go_t < cut[0][0] <= sp.end_t for sp in spans)):
            continue
        j = bisect.bisect_right(obs_times, start)
        seen = [o for o in observations[j:] if o.scenario == inj.scenario][:1]
        if seen and seen[0].state != "FAULT":
            rep.add(f"{where}: the room settled in {seen[0].state} ({seen[0].reason}), not a "
                    "latched FAULT")
        wall = start + wall_offset
        a = bisect.bisect_left(audits, wall - 0.05)
        if not (a < len(audits) and audits[a] <= wall + timing.audit_within_s):
            rep.add(f"{where}: no fault audit record within {timing.audit_within_s:g} s")
    return rep


def _confirmer(c: tuple[Any, ...]) -> str:
    return str(c[3]) if len(c) > 3 else "alice"


def pose_timeline(motion: Sequence[Any], injections: Sequence[Any],
                  initial: Pose | None) -> Callable[[float], Pose | None]:
    """The couch's own (true) pose at any time: its motion samples and the poses
    it was put at (`set_pose` injections), latest first."""
    events = sorted([(m.t, m.pose) for m in motion]
                    + [(i.t, i.value) for i in injections
                       if i.kind == "set_pose" and isinstance(i.value, Pose)],
                    key=lambda x: x[0])
    times = [t for t, _ in events]

    def at(t: float) -> Pose | None:
        k = bisect.bisect_right(times, t)
        return events[k - 1][1] if k else initial

    return at


def _travel(a: Pose, b: Pose) -> tuple[float, str, float]:
    """(vector shift mm, axis of the largest rotation, its size deg) from a to b."""
    shift = math.sqrt(sum((b.get(x) - a.get(x)) ** 2 for x in TRANSLATION_AXES))
    rot, axis = max((abs(b.get(x) - a.get(x)), x) for x in ROTATION_AXES)
    return shift, axis, rot


def _outside_path(pose: Pose, imaged: Pose, target: Pose, timing: Timing) -> str:
    """Axes on which `pose` is outside [imaged, target] beyond the clinical tolerance."""
    out = []
    for x in (*TRANSLATION_AXES, *ROTATION_AXES):
        tol = timing.imaging_tolerance_deg if x in ROTATION_AXES else timing.imaging_tolerance_mm
        lo, hi = sorted((imaged.get(x), target.get(x)))
        v = pose.get(x)
        if not lo - tol <= v <= hi + tol:
            unit = "deg" if x in ROTATION_AXES else "mm"
            out.append(f"{x} {v:+.2f} {unit} (imaged {imaged.get(x):+.2f}, target "
                       f"{target.get(x):+.2f})")
    return "; ".join(out)
