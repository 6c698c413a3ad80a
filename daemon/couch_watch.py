"""Where the couch is, and whether igrtd believes it (docs/motion-supervision.md).

Every status the couch controller sends, pushed or asked for, comes here
synchronously (`on_couch_event`):

* uncommanded motion (issue 11, item 4): igrtd remembers whether the couch
  was seen at rest since its last GO or JOG (`_couch_settled`; the MotionGate
  calls `motion_commanded` just before writing either). Motion reported while
  the room allows none is a STOP lost on the line (STOP again) or, if nothing
  was commanded since the couch was last at rest, a runaway (STOP, audited
  FAULT, reset needed);
* position plausibility during a move (issue 11, item 5): a pose the couch
  cannot have reached, for its axis speeds or off the commanded path, stops
  the couch and latches FAULT.

The trip itself (STOP first, then audit and state) belongs to
daemon/supervision.py, which owns this watch and hands it its `trip`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from daemon.config import RoomConfig
from daemon.motion_gate import MotionGate
from daemon.room import Room
from daemon.workflow import RoomState
from drivers.couch import CouchEvent, CouchStatus
from safety.plausibility import PlausibilityLimits, PoseReport, implausible_reasons
from safety.pose import AXES, ROTATION_AXES, Pose

log = logging.getLogger("igrt.room")

S = RoomState

# A status reporting the couch at rest counts as "settled" only when no GO is in
# flight (the controller reports IDLE as a GO uses its echo, then MOVING, before
# the ACK) and it arrived this long after igrtd last wrote GO or JOG: one made
# before the controller acted on a command must not make the motion that follows
# look uncommanded. While not settled outside motion, igrtd asks for a status
# every SETTLE_PROBE_S (an idle controller pushes none): one push period, so
# that a runaway soon after a move ended is recognised as one.
_SETTLE_GRACE_S = 0.02
SETTLE_PROBE_S = 0.02
# Room states in which nothing moves and nothing else watches the controller: a
# FAULT it reports there latches the room (MOVING and VERIFYING are the move
# tracker's, OFFLINE is start-up's, STOPPED and FAULT are latched already;
# SERVICE and MONITORING keep their own workflows and the gate refuses moves).
_LATCH_ON_CONTROLLER_FAULT = frozenset({S.STANDBY, S.READY, S.PROPOSED, S.AWAITING_APPROVAL,
                                        S.CONFIRMED, S.DONE})
_UPTIME_MOD = 1 << 32  # the controller's uptime is a 32-bit millisecond counter

TripFn = Callable[..., None]


def _newer(a: int, b: int) -> bool:
    """Controller uptime a is later than b (wrap-aware)."""
    return 0 < (a - b) % _UPTIME_MOD < _UPTIME_MOD // 2


class CouchWatch:
    def __init__(self, room: Room, gate: MotionGate, trip: TripFn) -> None:
        self.room = room
        self.gate = gate
        self._trip = trip
        self._restop_at = 0.0
        # True once the couch was seen at rest after igrtd's last GO or JOG (and after
        # any motion it reported); a GO or JOG written clears it. Controller uptimes
        # order the reports (replies can be late).
        self._couch_settled = False
        self._motion_sent_mono = 0.0
        self._rest_uptime: int | None = None
        self._moving_uptime: int | None = None
        # Uptime of the earliest report in which the controller had given up the
        # commanded motion (STOPPING or FAULT) since igrtd last wrote GO or JOG:
        # MOVING reported after it is motion nobody commanded, even if the couch
        # was never seen at rest in between (a runaway while a STOP winds down).
        # The earliest, not the newest: a wind-down goes on pushing STOPPING every
        # 20 ms, and a runaway's MOVING made in the millisecond of one of those
        # pushes cannot be ordered after it by uptime; it is after the first one.
        self._halted_uptime: int | None = None
        # Uptime of the report igrtd last took for a runaway: a report of giving up
        # made before it (a late reply) says nothing of the STOP written for it, and
        # must not make that same runaway's next MOVING look like a second one.
        self._runaway_uptime: int | None = None
        self._probe_at = 0.0
        # Position plausibility during a move: the previous report.
        self._last_report: PoseReport | None = None
        self.plausibility = self._plausibility_limits(room.config)

    def _plausibility_limits(self, config: RoomConfig) -> PlausibilityLimits:
        m = config.motion
        speeds = dict(self.room.model.max_speed or {})
        for axis in AXES:
            speeds.setdefault(axis, m.plausible_speed_deg_s if axis in ROTATION_AXES
                              else m.plausible_speed_mm_s)
        # A status may arrive this late (a delayed reply) and still be used.
        delay = config.couch.reply_timeout_s + config.couch.link_timeout_s
        return PlausibilityLimits(speeds, m.plausibility_margin_mm, m.plausibility_margin_deg,
                                  m.path_tolerance_mm, m.path_tolerance_deg, delay)

    def motion_commanded(self) -> None:
        """The MotionGate is about to write GO or JOG: motion from here on is ours."""
        self._couch_settled = False
        self._halted_uptime = None
        self._runaway_uptime = None
        self._motion_sent_mono = time.monotonic()

    def on_couch_event(self, event: CouchEvent) -> None:
        """Every status the controller sends (pushed or asked for), synchronously.

        * During a move, a reported pose that is impossible for the commanded
          motion (too fast for the axis, or away from both start and target)
          stops the couch and latches FAULT (issue 11, item 5).
        * Motion reported (MOVING, or axes moving in any state) while the room
          allows no motion: if nothing was commanded since the couch was last at
          rest, or the controller reports MOVING after it reported giving up the
          commanded motion (STOPPING, FAULT), it is a runaway: STOP, then an
          audited FAULT that needs a reset (issue 11, item 4). Otherwise (a move
          winding down, a STOP lost on the line, a faulted controller still
          moving) STOP is written again, at most every 20 ms, except while the
          controller reports STOPPING (it is carrying out a STOP).
        * FAULT reported at rest while nothing moves and nothing else watches the
          controller (STANDBY, READY, PROPOSED, AWAITING_APPROVAL, CONFIRMED,
          DONE; no GO in flight): the room latches FAULT, audited; reset clears it.
        * In CONFIRMED the controller reports MOVING for a GO just written, before
          it ACKs it; that GO cleared `_couch_settled`, so it is neither stopped
          nor taken for a runaway. MOVING in CONFIRMED with nothing written is.
        """
        if not isinstance(event, CouchStatus):
            return  # a link event: supervision handles link loss
        state, pose = event.state, event.pose
        room = self.room.workflow.state
        uptime = int(event.uptime_ms)
        report = PoseReport(pose, uptime, float(event.received_at))
        previous, self._last_report = self._last_report, report
        active = self.room.active
        if room == S.MOVING and active is not None:
            if active.started.start is not None:
                self._check_plausible(active.started.start, active.started.target, previous,
                                      report)
        elif self.gate.in_flight is not None:  # GO written, its ACK not processed yet
            self._check_plausible(*self.gate.in_flight, previous, report)
        if (room in (S.MOVING, S.SERVICE) or self.gate.go_in_flight) and (
                event.state == "MOVING" or any(event.moving)):
            self._check_clearance(pose, room)
        moving_bits = tuple(event.moving)
        if state in ("STOPPING", "FAULT") and self._commanded_motion_over() and (
                self._runaway_uptime is None or _newer(uptime, self._runaway_uptime)) and (
                self._halted_uptime is None or _newer(self._halted_uptime, uptime)):
            self._halted_uptime = uptime  # the earliest such report (see __init__)
        if state != "MOVING" and not any(moving_bits):
            if state != "STOPPING" and self._commanded_motion_over() and (
                    self._moving_uptime is None or _newer(uptime, self._moving_uptime)):
                self._couch_settled = True
                self._rest_uptime = uptime
            if state == "FAULT" and room in _LATCH_ON_CONTROLLER_FAULT \
                    and not self.gate.go_in_flight:
                self._controller_fault(event.fault_code, room)
            return
        if self._rest_uptime is not None and not _newer(uptime, self._rest_uptime):
            return  # a late reply from before the couch was last seen at rest
        if self._moving_uptime is None or _newer(uptime, self._moving_uptime):
            self._moving_uptime = uptime
        if room in (S.MOVING, S.SERVICE) or (self.gate.go_in_flight and room == S.CONFIRMED):
            # Motion igrtd is commanding (the gate may not have seen the GO's ACK yet).
            # A GO still unanswered in a room that has since tripped is not: its STOP
            # may have been lost on the line, so the motion is stopped again below.
            return
        if self._couch_settled or (state == "MOVING" and self._halted_uptime is not None
                                   and _newer(uptime, self._halted_uptime)):
            # Motion of any kind reported (MOVING, or axes moving in STOPPING / FAULT / IDLE)
            # after the couch was at rest with nothing commanded since, or MOVING
            # after the controller gave up the commanded motion: a runaway.
            self._uncommanded_motion(pose, moving_bits, room, uptime)
            return
        if state == "STOPPING" or room == S.CONFIRMED:
            return  # a STOP winding down, or the GO just written starting
        # Motion reported in any other controller state (MOVING; axes moving in
        # FAULT or IDLE) while the room allows none: STOP again. A controller in
        # FAULT keeps moving only if something is wrong with it, and a STOP is
        # harmless where none was needed.
        now = time.monotonic()
        if now - self._restop_at < 0.02:  # at most one repeat per status push period
            return
        self._restop_at = now
        log.warning("couch executing motion while the room is %s: STOP again", room)
        self.room.stop_couch_now()

    def _commanded_motion_over(self) -> bool:
        """A report now describes the controller after igrtd's last GO or JOG took
        effect (none in flight, and made after the controller could act on it)."""
        return not self.gate.go_in_flight and (
            time.monotonic() - self._motion_sent_mono > _SETTLE_GRACE_S)

    @property
    def awaiting_rest(self) -> bool:
        """igrtd has not seen the couch at rest since its last motion command."""
        return not self._couch_settled

    def probe_settled(self) -> None:
        """Ask the couch for a status while igrtd has not seen it at rest since its last
        motion command, so that a runaway afterwards is recognised as one."""
        now = time.monotonic()
        if (self._couch_settled or self.gate.go_in_flight or now - self._probe_at < SETTLE_PROBE_S
                or self.room.workflow.state in (S.MOVING, S.SERVICE)
                or not self.room.couch_link_ok()):
            return
        self._probe_at = now

        async def probe() -> None:
            with contextlib.suppress(Exception):  # a failed read is tried again later
                await self.room.couch.status()

        self.room.spawn(probe())

    def _controller_fault(self, fault_code: str, room: RoomState) -> None:
        """The controller latched a fault of its own while igrtd moved nothing (its
        heartbeat watchdog after igrtd's loop was held up past its timeout, a drive
        fault): the room latches FAULT with it, audited, so that the people see it and
        their reset clears both. A confirmation held is spent; before, the room
        stayed as it was and the next TARGET was refused by the controller."""
        log.error("couch controller reports FAULT %s while the room is %s", fault_code, room)
        self._trip(f"couch controller fault {fault_code} while the room was {room}; "
                   "reset needed", S.FAULT, what="controller fault", fault_code=fault_code,
                   room_state=str(room))

    def _uncommanded_motion(self, pose: Pose, moving: tuple[bool, ...], room: RoomState,
                            uptime: int) -> None:
        """The couch moves and nothing was commanded: STOP, audit, latch FAULT."""
        self.room.stop_couch_now()
        self._restop_at = time.monotonic()
        # The STOP is now the motion in progress: repeats of this episode only
        # re-STOP; a new runaway after the couch was seen at rest, or MOVING after
        # the controller reported giving up for this STOP, is audited anew.
        self._couch_settled = False
        self._halted_uptime = None
        self._runaway_uptime = uptime
        axes = [a for a, m in zip(AXES, moving) if m]
        log.error("uncommanded couch motion (%s) while the room is %s: STOP, FAULT",
                  ", ".join(axes) or "MOVING reported", room)
        self._trip(f"uncommanded couch motion ({', '.join(axes) or 'controller reports MOVING'}) "
                   f"while the room was {room}", S.FAULT, what="uncommanded motion",
                   pose=pose.as_dict(), moving_axes=axes, room_state=str(room))

    def _check_clearance(self, pose: Pose, room: RoomState) -> None:
        """A couch moving closer to the gantry's objects than the hard margin (the gantry
        turned during the move, an arm came out) stops: STOPPED, audited (issue 17)."""
        try:
            reason = self.room.collision_hard_stop(pose)
        except Exception as exc:  # noqa: BLE001 - a clearance nobody can vouch for stops
            reason = f"collision: clearance not computable: {exc}"
        if reason is None:
            return
        self.room.stop_couch_now()
        log.error("couch stopped: %s", reason)
        self._trip(reason, S.STOPPED, what="collision", pose=pose.as_dict(), room=str(room))

    def _check_plausible(self, start: Pose, target: Pose, previous: PoseReport | None,
                         report: PoseReport) -> None:
        reasons = implausible_reasons(start, target, previous, report, self.plausibility)
        if not reasons:
            return
        self.room.stop_couch_now()
        log.error("implausible couch position during motion: %s", "; ".join(reasons))
        self._trip("implausible couch position during motion: " + "; ".join(reasons),
                   S.FAULT, what="implausible position", pose=report.pose.as_dict(),
                   previous_pose=previous.pose.as_dict() if previous else None,
                   start=start.as_dict(), target=target.as_dict(), details=reasons)

