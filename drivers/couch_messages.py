"""What the couch driver reports: its errors, the controller's status and target
echoes, and the decoding of a NAK into a refusal that names field, value, limit
and unit (docs/protocols/couch-serial.md).

Kept apart from drivers/couch.py (the link itself) so the daemon's typed ports
and the tests can speak of a couch status without the serial machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from drivers import couch_protocol as cp
from safety.pose import AXES, UNITS, Pose

AXIS_COUNT = cp.N_AXES


class CouchError(Exception):
    """Base class of everything the couch driver raises."""


class CouchLinkLost(CouchError):
    """The serial link is down: port closed, unreadable, or silent too long."""


class CouchTimeout(CouchLinkLost):
    """A request got no reply within reply_timeout_s (treat as a link problem)."""


class CouchRefused(CouchError):
    """The controller answered NAK: the command was not acted on."""

    def __init__(
        self,
        request: str,
        reason: str,
        *,
        field: str | None = None,
        value: float | None = None,
        limit: float | None = None,
        unit: str = "",
    ) -> None:
        self.request = request
        self.reason = reason
        self.field = field
        self.value = value
        self.limit = limit
        self.unit = unit
        msg = f"couch controller refused {request}: {reason}"
        if field is not None and value is not None and limit is not None:
            u = f" {unit}" if unit else ""
            msg += f" ({field} {value:.3f}{u}, controller limit {limit:.3f}{u})"
        super().__init__(msg)


@dataclass(frozen=True, slots=True)
class CouchStatus:
    state: str  # IDLE / ARMED / MOVING / STOPPING / FAULT
    pose: Pose
    moving: tuple[bool, ...]
    faults: tuple[bool, ...]
    fault_code: str  # none / heartbeat_lost / following_error / travel_limit / internal
    echo_id: int  # outstanding echo, 0 if none
    echo_remaining_ms: int
    crc_errors: int
    framing_errors: int
    heartbeat_timeout_ms: int
    uptime_ms: int
    received_at: float  # time.monotonic() when the frame was decoded

    @property
    def any_moving(self) -> bool:
        return any(self.moving)


@dataclass(frozen=True, slots=True)
class TargetEcho:
    echo_id: int
    target: Pose
    validity_ms: int
    received_at: float
    # The couch as the controller armed: its pose and moving axes when the TARGET
    # arrived (the pre-GO check's view of where the couch is).
    pose: Pose
    moving: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class LinkEvent:
    ok: bool
    reason: str
    at: float


CouchEvent = CouchStatus | LinkEvent
Listener = Callable[[CouchEvent], None]
# Sees every frame at the driver boundary: ("tx" | "rx", whole frame bytes).
FrameTap = Callable[[str, bytes], None]


def name_of(code: int, enum: type[IntEnum]) -> str:
    try:
        return str(enum(code).name)
    except ValueError:
        return f"unknown({code})"


AXIS_UNITS = tuple(UNITS[a] for a in AXES)


def pose_from_wire(positions: tuple[int, ...]) -> Pose:
    return Pose(*cp.positions_from_wire(positions))


def pose_to_wire(pose: Pose) -> cp.Positions:
    return cp.positions_to_wire(pose.as_tuple(), AXES, AXIS_UNITS)


# Lookup tables keep the per-STATUS cost low (it arrives every 20 ms while moving).
BITS_OF_MASK: tuple[tuple[bool, ...], ...] = tuple(
    tuple(bool(m >> i & 1) for i in range(AXIS_COUNT)) for m in range(1 << AXIS_COUNT)
)
STATE_NAMES = {int(s): s.name for s in cp.CtrlState}
FAULT_NAMES = {int(f): f.name.lower() for f in cp.FaultCode}


def bits(mask: int) -> tuple[bool, ...]:
    return BITS_OF_MASK[mask & ((1 << AXIS_COUNT) - 1)]


def describe_field(field: int) -> tuple[str | None, str, float]:
    """NAK field code -> (name, unit, wire integers per unit)."""
    if field < AXIS_COUNT:
        axis = AXES[field]
        return axis, UNITS[axis], cp.AXIS_SCALE[field]
    if cp.NakField.JOG_VELOCITY_0 <= field < cp.NakField.JOG_VELOCITY_0 + AXIS_COUNT:
        i = field - cp.NakField.JOG_VELOCITY_0
        return f"{AXES[i]} jog velocity", f"{UNITS[AXES[i]]}/s", cp.AXIS_SCALE[i]
    if field == cp.NakField.VALIDITY_MS:
        return "validity", "ms", 1.0
    if field == cp.NakField.DURATION_MS:
        return "jog duration", "ms", 1.0
    if field == cp.NakField.AXIS_INDEX:
        return "axis index", "", 1.0
    return None, "", 1.0


def refusal_from_nak(nak: cp.Nak) -> CouchRefused:
    request = name_of(nak.nacked_type, cp.MsgType)
    reason = name_of(nak.reason, cp.NakReason).lower()
    name, unit, k = describe_field(nak.field)
    if name is None:
        return CouchRefused(request, reason)
    return CouchRefused(
        request, reason, field=name, value=nak.value / k, limit=nak.limit / k, unit=unit
    )
