"""Room interlocks as a snapshot of named inputs, and which of them block motion.

An input is "closed" when its safe condition holds (door closed, e-stop chain
intact, ...). Anything not known to be closed and fresh counts as open: an
input that is reported open, an input older than the allowed age, a whole
snapshot whose source (the PLC) has stopped updating, or a required input
missing from the snapshot. Times are monotonic seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DOOR_CLOSED = "door_closed"
ESTOP_CHAIN_OK = "estop_chain_ok"
COLLISION_PADS_CLEAR = "collision_pads_clear"
MOTION_ENABLE_PRESSED = "motion_enable_pressed"
IMAGER_ARMS_PARKED = "imager_arms_parked"

STANDARD_INPUTS: tuple[str, ...] = (
    DOOR_CLOSED,
    ESTOP_CHAIN_OK,
    COLLISION_PADS_CLEAR,
    MOTION_ENABLE_PRESSED,
    IMAGER_ARMS_PARKED,
)

# What the console shows when a standard input is open; other inputs get "<name> open".
_OPEN_TEXT: dict[str, str] = {
    DOOR_CLOSED: "door open",
    ESTOP_CHAIN_OK: "emergency stop chain broken",
    COLLISION_PADS_CLEAR: "collision pad pressed",
    MOTION_ENABLE_PRESSED: "motion enable not pressed",
    IMAGER_ARMS_PARKED: "imager arms not parked",
}


@dataclass(frozen=True, slots=True)
class InterlockInput:
    name: str
    closed: bool
    age_s: float  # age of this reading when the snapshot was taken


@dataclass(frozen=True, slots=True)
class InterlockSnapshot:
    inputs: tuple[InterlockInput, ...]
    taken_at: float  # monotonic time the snapshot was taken
    source_age_s: float  # age of the source's heartbeat when the snapshot was taken
    source: str = "plc"

    def get(self, name: str) -> InterlockInput | None:
        for item in self.inputs:
            if item.name == name:
                return item
        return None


def open_text(name: str) -> str:
    return _OPEN_TEXT.get(name, f"{name} open")


def _source_reasons(
    snapshot: InterlockSnapshot, now: float, max_age_s: float
) -> tuple[list[str], float]:
    """Why the snapshot's source cannot be trusted now, and the time since it was taken."""
    reasons: list[str] = []
    elapsed = now - snapshot.taken_at
    if not elapsed >= 0:
        # A snapshot from the future (or NaN times) cannot be trusted to describe now.
        reasons.append(f"{snapshot.source} snapshot time is invalid ({elapsed:.2f} s old)")
        elapsed = math.inf
    source_age = snapshot.source_age_s + elapsed
    if not source_age <= max_age_s:
        reasons.append(f"{snapshot.source} heartbeat stale {source_age:.2f} s > {max_age_s:.2f} s")
    return reasons, elapsed


def open_interlocks(
    snapshot: InterlockSnapshot,
    now: float,
    max_age_s: float,
    required: Iterable[str] = (),
) -> list[str]:
    """Reasons motion is blocked; empty means every input is closed and fresh."""
    reasons, elapsed = _source_reasons(snapshot, now, max_age_s)
    for item in snapshot.inputs:
        age = item.age_s + elapsed
        if not item.closed:
            reasons.append(open_text(item.name))
        elif not age <= max_age_s:
            reasons.append(f"{item.name} stale {age:.2f} s > {max_age_s:.2f} s")
    present = {item.name for item in snapshot.inputs}
    for name in required:
        if name not in present:
            reasons.append(f"{name} missing from {snapshot.source} snapshot")
    return reasons


# --------------------------------------------------------------------------
# The room PLC reading, judged (docs/protocols/room-plc.md). The driver reports
# raw values with the range the register map documents for each; this is the
# one place that decides what they mean for motion, so that the daemon, the
# diagnostics and the tests all see the same verdict and the same words.
# --------------------------------------------------------------------------

PLC_SOURCE = "room PLC"

#: An arm whose parked switch reads closed must also report a position within
#: this fraction of full travel of parked (0). Why 2 %: a parked switch trips
#: within the last millimetres of travel; a position further out while the switch
#: reads closed means the switch or the position sensor is lying, and we cannot
#: tell which, so the arm is not parked.
PARKED_POSITION_TOLERANCE = 0.02
#: What the gantry angle register counts (PlcReading.gantry_angle), named in its
#: out-of-range reason so the line says the unit as well as the value and range.
GANTRY_ANGLE_UNIT = "0.01 deg"


@dataclass(frozen=True, slots=True)
class RegisterValue:
    """One raw register as read, with the inclusive range its documentation allows."""

    address: int
    value: int
    low: int
    high: int

    def in_range(self) -> bool:
        return self.low <= self.value <= self.high

    def out_of_range_text(self) -> str:
        return (
            f"{PLC_SOURCE} value out of range: register {self.address} = {self.value}, "
            f"documented {self.low}..{self.high}"
        )


@dataclass(frozen=True, slots=True)
class OpeningCounter:
    """One input's PLC opening counter in two consecutive reads (docs/protocols/room-plc.md).

    The PLC counts every opening of the input, modulo `modulus`; a different
    count than in the read before means the input opened since then, even if
    it reads closed again now (an opening shorter than the host's poll).
    """

    name: str  # the input, as in PlcReading.interlocks ("door_closed", ...)
    register: int
    previous: int | None  # None: no read before this one on the link, nothing to compare
    current: int
    modulus: int = 16

    def openings(self) -> int:
        """Openings counted between the two reads (0 when there is no previous read)."""
        if self.previous is None:
            return 0
        return (self.current - self.previous) % self.modulus

    def opened_text(self) -> str:
        return (
            f"{open_text(self.name)} for a moment: opened {self.openings()} time(s) since the "
            f"previous {PLC_SOURCE} read (opening counter in register {self.register}: "
            f"{self.previous} -> {self.current})"
        )


@dataclass(frozen=True, slots=True)
class ArmReading:
    """One imager arm as the PLC reports it; `position` counts from 0 (parked) to `high`."""

    name: str
    parked_switch_closed: bool
    moving: bool
    position: RegisterValue | None  # None: not read (link down)
    parked_openings: OpeningCounter | None = None  # the parked switch's opening counter


@dataclass(frozen=True, slots=True)
class PlcReading:
    """What the host read from the room PLC, not yet judged. Times are monotonic seconds."""

    link_ok: bool
    link_reason: str
    taken_at: float
    read_age_s: float  # age of the read the values come from, at `taken_at`
    heartbeat_age_s: float  # since the heartbeat was last seen changing, at `taken_at`
    interlocks: Mapping[str, bool]  # door, e-stop chain, pads: closed as the bit reads
    motion_enable_pressed: bool  # as the bit reads
    arms: tuple[ArmReading, ...]
    fault_code: RegisterValue | None  # None: not read (link down)
    registers: tuple[RegisterValue, ...]  # the rest of the block (status word, echo, ...)
    # Opening counters of the interlocks proper and of hold-to-run (the arms'
    # parked switches: ArmReading.parked_openings).
    openings: tuple[OpeningCounter, ...] = ()
    # The gantry angle register, counting GANTRY_ANGLE_UNIT (IEC 61217, 0 = beam
    # from above); None: not in this reading. Like an arm position, its own
    # sensor: out of range it is a stop condition but leaves the rest vouched for.
    gantry_angle: RegisterValue | None = None


@dataclass(frozen=True, slots=True)
class PlcVerdict:
    """What the room PLC reading allows.

    `open_interlocks` are stop conditions in every state (motion refused before
    it starts, stopped while it runs, a confirmation spent); hold-to-run and the
    imager arms are separate because before a move they are legitimately
    released / extended.
    """

    open_interlocks: tuple[str, ...]
    motion_enable_pressed: bool
    imager_arms_parked: bool
    imager_arms_moving: bool
    arm_reasons: tuple[str, ...]  # why the arms do not count as parked; empty when parked


def judge_plc(reading: PlcReading, now: float, max_age_s: float) -> PlcVerdict:
    """The one rule for the room PLC: anything the host cannot vouch for is open.

    - link down or heartbeat not seen changing within `max_age_s`: every input open;
    - a non-zero fault code: a stop condition (the PLC says something is wrong);
    - a register outside its documented range: a stop condition, never clamped;
      an arm position out of range makes that arm not parked, a gantry angle out
      of range is named with its unit (the collision model cannot place the
      gantry), any other register out of range means nothing in the block is
      vouched for (the PLC is confused);
    - an arm whose parked switch reads closed while its position is far from
      parked is not parked (one of the two sensors is wrong);
    - an input whose opening counter changed since the previous read opened in
      between, however briefly: an interlock is then a stop condition, hold-to-run
      reads released, an arm's parked switch reads not parked, for this reading.
    """
    if not reading.link_ok:
        reason = f"{PLC_SOURCE}: {reading.link_reason}"
        return PlcVerdict((reason,), False, False, True, (reason,))

    stops: list[str] = []
    if reading.fault_code is None:
        stops.append(f"{PLC_SOURCE} fault code not read")
    elif reading.fault_code.value != 0:
        stops.append(f"{PLC_SOURCE} fault code {reading.fault_code.value}")
    confused = [r.out_of_range_text() for r in reading.registers if not r.in_range()]
    if reading.fault_code is not None and not reading.fault_code.in_range():
        confused.append(reading.fault_code.out_of_range_text())
    stops.extend(confused)
    vouched = not confused

    # Freshness and the interlocks proper go through the generic rule, so the
    # staleness arithmetic and the words exist once. A confused block already
    # stops everything by the reasons above; its bits are not repeated as
    # "door open" etc., which would be claims about the room it cannot make.
    snap = InterlockSnapshot(
        tuple(
            InterlockInput(name, closed, reading.read_age_s)
            for name, closed in reading.interlocks.items()
        ) if vouched else (),
        reading.taken_at,
        reading.heartbeat_age_s,
        source=PLC_SOURCE,
    )
    stops.extend(open_interlocks(snap, now, max_age_s))
    enable_opened = False
    if vouched:
        for counter in reading.openings:
            if not counter.openings():
                continue
            if counter.name == MOTION_ENABLE_PRESSED:
                enable_opened = True
            else:
                stops.append(counter.opened_text())
    source_reasons, elapsed = _source_reasons(snap, now, max_age_s)
    fresh = not source_reasons and reading.read_age_s + elapsed <= max_age_s
    trusted = vouched and fresh

    arm_reasons: list[str] = []
    if not trusted:
        arm_reasons.append(f"{PLC_SOURCE} reading not vouched for")
    for arm in reading.arms:
        arm_reason = _arm_not_parked(arm)
        if arm_reason is not None:
            arm_reasons.append(arm_reason)
        elif vouched and arm.parked_openings is not None and arm.parked_openings.openings():
            arm_reasons.append(f"imager {arm.name} arm not parked: "
                               + arm.parked_openings.opened_text())
        if arm.position is not None and not arm.position.in_range():
            stops.append(arm.position.out_of_range_text())
    if not reading.arms:
        arm_reasons.append(f"no imager arms in the {PLC_SOURCE} reading")
    gantry = reading.gantry_angle
    if gantry is not None and not gantry.in_range():
        stops.append(f"{gantry.out_of_range_text()} (gantry angle in {GANTRY_ANGLE_UNIT})")
    return PlcVerdict(
        open_interlocks=tuple(stops),
        motion_enable_pressed=trusted and reading.motion_enable_pressed and not enable_opened,
        imager_arms_parked=not arm_reasons,
        imager_arms_moving=not trusted or any(arm.moving for arm in reading.arms),
        arm_reasons=tuple(arm_reasons),
    )


def _arm_not_parked(arm: ArmReading) -> str | None:
    what = f"imager {arm.name} arm"
    if not arm.parked_switch_closed:
        return f"{what} not parked"
    pos = arm.position
    if pos is None:
        return f"{what} position not read"
    if not pos.in_range():
        return f"{what} not parked: {pos.out_of_range_text()}"
    span = pos.high - pos.low
    if pos.value - pos.low > PARKED_POSITION_TOLERANCE * span:
        pct = 100.0 * (pos.value - pos.low) / span
        return (
            f"{what} not parked: parked switch closed but position {pct:.1f} % "
            f"(register {pos.address} = {pos.value}), more than "
            f"{PARKED_POSITION_TOLERANCE * 100:.1f} % from parked"
        )
    return None
