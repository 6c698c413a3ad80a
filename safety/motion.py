"""The rule behind the daemon's single motion choke point (R-MOTION, R-LIMITS, R-IDEMP).

`authorize_motion` is a pure function of a snapshot of everything relevant;
the daemon's MotionGate builds the snapshot and sends nothing unless the
decision is `allowed`. Every failed rule adds a reason (they are all
reported, not just the first), and any reason means no motion.

Rules:
* the room is in a state that permits this kind of motion;
* no interlock is open;
* couch motion: the current pose is known and the target is a finite pose
  inside every couch-model limit (refused, never clipped);
* the command's deadline has not passed (nothing stale moves anything);
* a correction move (couch_move) has a target, a deadline and a
  confirmation; a confirmation that was already executed never moves
  anything again (a correction applies once);
* the hold-to-run enable is fresh;
* a correction move given the couch pose at imaging: the couch is still
  there (within `imaging_tolerance_mm` / `_deg`), because the correction is
  relative to that pose and the couch may have been jogged or pushed since
  (issue 11, item 2);
* the couch never moves while an imager arm is not parked or is moving;
  an imager arm never moves while the couch moves;
* a correction move: the couch controller's latest status reports a state
  in which it takes TARGET and GO (IDLE or ARMED). In FAULT (its own
  heartbeat watchdog tripped while the room was idle, say), MOVING or
  STOPPING it would NAK the TARGET bad_state: nothing is sent, and the
  reason names the state (docs/protocols/couch-serial.md).
* between beams (beam-on monitoring running, a correction under way) the
  couch moves only while the room PLC reports its beam-hold output asserted:
  a value it has not reported, or a released hold, refuses every motion
  (issue 17, item 8); and a correction between beams moves only while the
  markers still show the drift it was computed for, seen recently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from safety.couch_model import CouchModel
from safety.pose import AXES, Pose
from safety.travel import couch_moved_reasons

MotionKind = Literal["couch_move", "couch_jog", "imager_arm"]
KINDS: frozenset[str] = frozenset({"couch_move", "couch_jog", "imager_arm"})
COUCH_KINDS: frozenset[str] = frozenset({"couch_move", "couch_jog"})

# Room states (daemon.workflow.RoomState values) in which each kind of motion
# may be sent. A correction move is authorised from CONFIRMED (before the
# target is sent) and re-authorised just before GO, possibly after the
# workflow entered MOVING. Jogs and arm moves need an idle room.
DEFAULT_MOTION_STATES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "couch_move": frozenset({"CONFIRMED", "MOVING"}),
        # Jogging is service work: only in the room's SERVICE state, clinical workflow locked out.
        "couch_jog": frozenset({"SERVICE"}),
        "imager_arm": frozenset(
            {"STANDBY", "READY", "PROPOSED", "AWAITING_APPROVAL", "CONFIRMED", "DONE", "SERVICE"}
        ),
    }
)

# Couch controller states (docs/protocols/couch-serial.md) in which it takes the
# commands of each kind of motion: TARGET and GO only in IDLE or ARMED.
CONTROLLER_STATES: Mapping[str, frozenset[str]] = MappingProxyType(
    {"couch_move": frozenset({"IDLE", "ARMED"})}
)

# A correction move runs only from a confirmation, before a deadline and to a
# target. Jogs and arm moves are operator hold-to-run motions without them; if
# a confirmation or deadline is given anyway it is checked the same way.
CORRECTION_KINDS: frozenset[str] = frozenset({"couch_move"})


@dataclass(frozen=True, slots=True, kw_only=True)
class MotionRequest:
    kind: str
    room_state: str
    target: Pose | None
    current: Pose | None
    confirmation_id: str | None = None
    confirmed_at: float | None = None  # monotonic seconds
    already_executed: bool = False
    deadline: float | None = None  # monotonic seconds: the command is stale after this
    now: float  # monotonic seconds
    open_interlocks: Sequence[str]
    couch_moving: bool
    imager_arms_parked: bool
    imager_moving: bool
    hold_to_run_fresh: bool
    model: CouchModel
    # Where the couch was when the registered image was taken (correction moves).
    couch_at_imaging: Pose | None = None
    imaging_tolerance_mm: float = 0.5
    imaging_tolerance_deg: float = 0.2
    # Resuming an interrupted move of the same correction: the couch may also be
    # anywhere between couch_at_imaging and this pose (its target).
    imaging_path_end: Pose | None = None
    permitted_states: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: DEFAULT_MOTION_STATES
    )
    # The couch controller's state and fault code in its latest status (None: no
    # status yet, or not given; a correction move is then refused).
    couch_state: str | None = None
    couch_fault: str = "none"
    # Between beams: the beam-hold output as the room PLC reads it back (None: not
    # reported) must be True for anything to move.
    beam_hold_required: bool = False
    beam_held: bool | None = None
    # Why the correction no longer fits what is seen now (a correction between beams
    # whose target has moved since), or None.
    correction_refusal: str | None = None


@dataclass(frozen=True, slots=True)
class MotionDecision:
    allowed: bool
    reasons: list[str]

    def __bool__(self) -> bool:
        return self.allowed


def authorize_motion(req: MotionRequest) -> MotionDecision:
    reasons: list[str] = []
    if req.kind not in KINDS:
        return MotionDecision(False, [f"unknown motion kind {req.kind!r}"])
    couch = req.kind in COUCH_KINDS
    correction = req.kind in CORRECTION_KINDS

    permitted = req.permitted_states.get(req.kind, frozenset())
    if req.room_state not in permitted:
        needed = ", ".join(sorted(permitted)) or "none"
        reasons.append(
            f"room state {req.room_state} does not permit {req.kind} (permitted: {needed})"
        )

    reasons.extend(f"interlock open: {r}" for r in req.open_interlocks)

    if couch:
        reasons.extend(_couch_target_reasons(req, target_required=correction))
    reasons.extend(_controller_state_reasons(req))
    if correction and req.couch_at_imaging is not None and req.current is not None:
        # (An unknown current pose is already refused above.)
        reasons.extend(couch_moved_reasons(
            req.couch_at_imaging, req.current, req.imaging_tolerance_mm,
            req.imaging_tolerance_deg, toward=req.imaging_path_end))

    if req.deadline is None:
        if correction:
            reasons.append(f"{req.kind} has no deadline: an undated command never moves")
    elif not req.now <= req.deadline:
        text = f"command stale: deadline passed {req.now - req.deadline:.3f} s ago"
        if req.confirmed_at is not None:
            text += f" (confirmed {req.now - req.confirmed_at:.3f} s ago)"
        reasons.append(text)

    if req.confirmation_id is None and correction:
        reasons.append(f"{req.kind} needs a confirmation and none was given")
    if req.already_executed:
        reasons.append(
            f"confirmation {req.confirmation_id or '(unnamed)'} was already executed: "
            "a correction applies once"
        )

    if not req.hold_to_run_fresh:
        reasons.append("hold-to-run enable not held or stale")

    if req.beam_hold_required and req.beam_held is not True:
        read = "not reported" if req.beam_held is None else "released"
        reasons.append(f"beam not confirmed held: the room PLC's beam-hold output is {read}; "
                       "between beams nothing moves unless the PLC reports the beam held")
    if req.correction_refusal is not None and correction:
        reasons.append(req.correction_refusal)

    if couch:
        if not req.imager_arms_parked:
            reasons.append("imager arms not parked")
        if req.imager_moving:
            reasons.append("imager arm moving")
        if correction and req.couch_moving:
            # A correction starts from a couch at rest: axes reported moving (a
            # runaway, a move still winding down) mean the pose checked is not
            # where the move would start. Jogs follow each other while the couch
            # still moves, by design.
            reasons.append("couch moving")
    elif req.couch_moving:
        reasons.append("couch moving")

    return MotionDecision(not reasons, reasons)


def _controller_state_reasons(req: MotionRequest) -> list[str]:
    accepting = CONTROLLER_STATES.get(req.kind)
    if accepting is None or req.couch_state in accepting:
        return []
    needed = " or ".join(sorted(accepting))
    if req.couch_state is None:
        return [f"couch controller state unknown: {req.kind} needs it {needed}"]
    fault = f" ({req.couch_fault})" if req.couch_fault not in ("", "none") else ""
    return [f"couch controller reports {req.couch_state}{fault}: {req.kind} needs it {needed}"]


def _couch_target_reasons(req: MotionRequest, target_required: bool) -> list[str]:
    out: list[str] = []
    if req.current is None:
        out.append("current couch pose unknown")
    if req.target is None:
        if target_required:
            out.append("no target pose")
        return out
    bad = [a for a in AXES if not math.isfinite(req.target.get(a))]
    if bad:
        out.append(f"target {', '.join(bad)} not a finite number")
    out.extend(f"target {v.message}" for v in req.model.check_pose(req.target))
    return out
