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
2. FRESH CONFIRMATION: every GO is matched to its own confirmation, answered
   before the GO and sent after the most recent STOP or FAULT the couch
   executed; no confirmation is used by two GOs; JOG never happens (the
   campaign never asks for one).
3. HALTING: when a window opens while the couch is executing a move, the move
   ends (STOP or FAULT executed, or natural arrival) within the halt bound.
   For serial silence, where no STOP can cross the wire, the controller's own
   heartbeat watchdog must fault it within its timeout plus the halt bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    # Openings shorter than this may fall between two PLC polls; the PLC
    # program, not the host, must latch such glitches (docs/motion-supervision.md).
    min_observable_s: float = 0.015


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


def plc_delay_at(injections: Sequence[Any], t: float) -> float:
    d = 0.0
    for a, b, v in _paired(injections, "plc_delay", lambda v: float(v) > 0):
        if a <= t < b + float(v):  # answers in flight when cleared still arrive late
            d = max(d, float(v))
    return d


def windows(initial: dict[str, bool], changes: Sequence[tuple[float, str, bool]],
            injections: Sequence[Any], holds_sent: Sequence[float], t0: float,
            timing: Timing) -> list[Window]:
    out: list[Window] = []
    for s, e, name in _input_windows(initial, changes, t0):
        out.append(Window(s, e, f"{name} open" if name in INTERLOCK_INPUTS else name,
                          plc_delay_at(injections, s), "plc", name))
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
    confirms: Sequence[tuple[float, float, int]],
    holds_sent: Sequence[float],
    t0: float,
    t_end: float,
    timing: Timing,
    scenario_of: Any = lambda t: -1,
) -> Report:
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
    for e in executed:
        if e.kind != "GO":
            continue
        k = bisect.bisect_left(stop_times, e.t)
        last_stop = stop_times[k - 1] if k else float("-inf")
        eligible = [i for i, (sent, answered, _) in enumerate(confirms)
                    if sent > last_stop and answered < e.t and i not in used]
        if not eligible:
            rep.add(f"scenario {scenario_of(e.t)}: GO executed at {e.t - t0:.3f} s without a "
                    f"confirmation of its own issued after the last STOP/FAULT "
                    f"({(e.t - last_stop) * 1e3:.1f} ms before)")
            continue
        used.add(eligible[-1])

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
    return rep
