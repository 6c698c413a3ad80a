"""Motion supervision: hold-to-run, the start of a move, stop, trip, arrival, reset.

How a stop is guaranteed (docs/motion-supervision.md): every trip writes STOP
to the couch synchronously (`Room.stop_couch_now`) before anything else -
before auditing, before changing state - so nothing queued on the event loop
delays it. Three layers call it: the PLC listener (`_on_plc_change`, on any
change, in the same event-loop step), the supervision period (`_supervise`:
couch link, PLC picture, hold-to-run freshness, move timeout) and, outside
igrtd, the controller's own heartbeat watchdog. What the couch reports about
its position is judged by daemon/couch_watch.py, which trips through here.

The first hold-to-run heartbeat after a confirmation starts the move through
the MotionGate (daemon/motion_gate.py), the one choke point that this module
owns and hands to service mode and the imager arms. A move that ends is
verified against the deadband (`_verify_arrival`); apply-once across a
restart is reconciled in `start`. Roles are checked by the RoomService facade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from daemon.api import Actor, CommandError, Reply
from daemon.couch_watch import SETTLE_PROBE_S, CouchWatch
from daemon.dicom_outbox import RegistrationOutbox, VerifiedRegistration
from daemon.jsontypes import JsonObject, as_str
from daemon.motion_gate import ConfirmationTicket, MotionGate, MotionRefused
from daemon.ports import ImagerArmsPort
from daemon.proposals import QA_SOURCE
from daemon.proposals import ProposalStatus as PS
from daemon.room import ActiveMove, Room, pose_json
from daemon.workflow import LATCHED, RoomState
from drivers.couch import CouchEvent, CouchStatus, LinkEvent
from drivers.plc import PlcSnapshot
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose

log = logging.getLogger("igrt.room")

S = RoomState

# States in which nothing can move and no move can start without a state change
# first (a confirmation, a jog, a move): outside MOVING the supervision loop then
# waits for `room.wake` (set on every state change and every couch link change)
# instead of waking every 50 ms, so an idle igrtd costs next to no CPU. The
# fallback period only re-checks the couch link for a couch driver that changed
# its link state without telling its listeners.
_IDLE_STATES = frozenset({S.OFFLINE, S.STANDBY, S.READY, S.PROPOSED, S.AWAITING_APPROVAL,
                          S.DONE, S.STOPPED, S.FAULT})
_IDLE_FALLBACK_S = 1.0
# Outside those states (CONFIRMED, VERIFYING, SERVICE, MONITORING) the link is
# re-checked on this period as before.
_LINK_CHECK_S = 0.05


class MotionSupervisor:
    def __init__(self, room: Room, arms: ImagerArmsPort | None = None,
                 barrier: Callable[[], Awaitable[None]] | None = None,
                 go_barrier: Callable[[], Awaitable[None]] | None = None) -> None:
        self.room = room
        config = room.config
        self.gate = MotionGate(
            room.couch, room.store, room.audit, room.motion_facts, model=room.model,
            target_validity_ms=config.motion.target_validity_ms, arms=arms,
            imaging_tolerance_mm=config.binding.couch_moved_tolerance_mm,
            imaging_tolerance_deg=config.binding.couch_moved_tolerance_deg,
            on_motion_sent=self._motion_commanded, barrier=barrier, go_barrier=go_barrier,
            collision=self._collision_reasons,
        )
        self.watch = CouchWatch(room, self.gate, self.trip)
        self._last_interlocks: JsonObject = {}
        self._tripping = False
        # Proposals under which a GO may have gone out: resuming one after an
        # interruption starts part of the way to the target (safety.travel).
        self._moved_under: set[str] = set()
        # The proposal whose move the MotionGate is starting (between the first
        # heartbeat, or a held confirmation, and GO's answer).
        self._starting: str | None = None
        # In MONITORING a PLC change is beam-on monitoring's to judge (set by RoomService).
        self.monitoring_plc_check: Callable[[], None] = lambda: None
        # After a verified move the applied registration goes to record-and-verify
        # (daemon/dicom_outbox.py, written in a thread); None: the room exports nothing.
        self.outbox = RegistrationOutbox.from_config(config, room.audit)

    def _collision_reasons(self, proposal_id: str | None, current: Pose | None,
                           target: Pose) -> list[str]:
        """The MotionGate's collision check: the proposal's proof when the room is as it
        was then, else the path proven again (daemon/collision_guard.py)."""
        p = self.room.proposals.get(proposal_id) if proposal_id is not None else None
        return self.room.collision_gate_reasons(p.collision if p is not None else None,
                                                current, target)

    def _motion_commanded(self) -> None:
        self.watch.motion_commanded()

    def _on_couch_link(self, event: CouchEvent) -> None:
        """A couch link change wakes the supervision loop, which acts on it (OFFLINE,
        STANDBY, a trip in CONFIRMED or VERIFYING) without waiting for a timer."""
        if isinstance(event, LinkEvent):
            self.room.wake.set()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Reconcile after a (possibly unclean) restart; the room comes up stopped."""
        # Stop first: whatever the couch was doing before we (re)started, it stops now.
        self.room.stop_couch_now()
        self.room.couch.add_listener(self.watch.on_couch_event)
        self.room.couch.add_listener(self._on_couch_link)
        if self.room.plc is not None:
            self.room.plc.add_listener(self._on_plc_change)
        else:
            log.warning("no room PLC configured: interlocks are not monitored "
                        "(acceptable only for simulation and bench work)")
        for move in self.room.store.unfinished_moves():
            # Read back from the store: narrowed, a malformed row is a named error.
            confirmation_id = as_str(move["confirmation_id"], "unfinished move confirmation_id")
            self.room.store.mark_interrupted(confirmation_id, {"by": "restart"})
            self.room.audit("recovery", "system", confirmation_id=confirmation_id,
                            proposal_id=move.get("proposal_id"),
                            outcome="interrupted move marked interrupted; it is never re-sent")
        pose = None
        status = None
        try:
            status = await self.room.couch.status()
            pose = status.pose
        except Exception as exc:  # noqa: BLE001 - the couch may simply not be there yet
            log.warning("couch status at start-up failed: %s", exc)
        self.room.audit("startup", "system", couch_pose=pose.as_dict() if pose else None,
                        couch_state=status.state if status else None,
                        couch_fault=status.fault_code if status else None,
                        plc=self.room.plc is not None,
                        audit_head=list(self.room.audit_log.head))
        if status is not None and status.state == "FAULT":
            if status.fault_code == "heartbeat_lost":
                # The controller stopped because igrtd was not there to send heartbeats
                # (restart, crash). Clearing that moves nothing; any other fault stays latched.
                await self.room.couch.reset()
                self.room.audit("recovery", "system", outcome="controller heartbeat fault from "
                                "igrtd's absence cleared; couch is stopped",
                                couch_pose=status.pose.as_dict())
            else:
                self.room.to(S.FAULT, f"couch controller fault {status.fault_code} at start-up")
                return
        if pose is not None:
            self.room.to(S.STANDBY, "couch link up")

    async def run(self) -> None:
        """Supervision: event driven for the PLC, polled for hold-to-run and the couch."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._supervise())
            tg.create_task(self._track_motion())

    # ------------------------------------------------------------ commands
    async def hold(self, actor: Actor, proposal_id: str) -> Reply:
        """Hold-to-run heartbeat. The first one after confirmation starts the move."""
        state = self.room.workflow.state
        last = self.room.last_result
        if state == S.MONITORING and last is not None and last.get("proposal_id") == proposal_id:
            # A correction between beams went DONE and monitoring resumed at once: the
            # hold that ran it learns that its move is over, not that it is refused.
            return {**self.room.progress(), "running": False, "done": True}
        if state == S.MONITORING:
            raise self.room.refuse(actor, "hold", "no couch motion while the beam is on: the "
                                   "room is MONITORING (end monitoring first)",
                                   proposal_id=proposal_id)
        if state == S.MOVING:
            if self.room.active is None or self.room.active.started.proposal_id != proposal_id:
                raise CommandError("the couch is moving for another proposal")
            if actor.user != self.room.hold.user:
                raise CommandError(f"motion is held by {self.room.hold.user}, not {actor.user}")
            self.room.hold.mono = time.monotonic()
            return self.room.progress()
        if state == S.CONFIRMED and self._starting == proposal_id:
            # Its move is on its way out (TARGET, echo, durable records, GO: tens of
            # milliseconds under disk load, against 50 ms between heartbeats): this
            # heartbeat keeps it held. Starting it again would find the confirmation
            # spent, and that refusal STOPs the couch.
            if actor.user != self.room.hold.user:
                raise CommandError(f"motion is held by {self.room.hold.user}, not {actor.user}")
            self.room.hold.mono = time.monotonic()
            return self.room.progress()
        if state != S.CONFIRMED:
            current = self.room.current
            if state in (S.PROPOSED, S.AWAITING_APPROVAL) and current is not None \
                    and current.id == proposal_id:
                # Held before the confirmation (or second approval) that lets it run:
                # the move starts as that lands (`start_if_held`).
                self.room.hold.beat(actor, proposal_id)
            # Not an error worth auditing each heartbeat: tell the console where we are.
            return {**self.room.progress(), "running": False}
        self.room.hold.beat(actor, proposal_id)
        return await self._start_move(actor, proposal_id)

    async def start_if_held(self, proposal_id: str) -> Reply | None:
        """The confirmation (or second approval) of `proposal_id` has just landed. If
        hold-to-run for it is held (its last heartbeat within the hold timeout), the
        move starts now, as that console's next heartbeat would start it, instead of
        up to a heartbeat later; None if not held. The heartbeat's time is kept as
        it arrived: this is no heartbeat, so the hold must go on arriving."""
        h = self.room.hold
        if (self.room.workflow.state != S.CONFIRMED or h.proposal_id != proposal_id
                or h.actor is None or not h.within(self.room.config.motion.hold_timeout_s)):
            return None
        return await self._start_move(h.actor, proposal_id)

    async def _start_move(self, actor: Actor, proposal_id: str) -> Reply:
        """CONFIRMED and held: the move of `proposal_id` through the MotionGate."""
        p = self.room.proposal(actor, "hold", proposal_id)
        c = p.confirmation
        assert c is not None
        if time.monotonic() > c.expires_mono:
            p.to(PS.PROPOSED)
            p.confirmation = None
            self.room.audit("expired", actor.user, proposal_id=p.id, confirmation_id=c.id)
            self.room.to(S.PROPOSED, f"confirmation {c.id} expired; confirm again", actor.user)
            raise CommandError(f"confirmation {c.id} expired; confirm again")
        ticket = ConfirmationTicket(c.id, p.id, c.user, p.target, c.at_mono, c.expires_mono,
                                    couch_at_imaging=p.couch_at_imaging,
                                    resumes_interrupted=p.id in self._moved_under)
        try:
            self._starting = p.id
            try:
                started = await self.gate.move_couch(ticket)
            finally:
                self._starting = None
        except MotionRefused as exc:
            self.room.hold.mono = None
            consumed = self.room.store.move_for_confirmation(c.id) is not None
            if exc.go_unanswered:
                # GO went out and was never answered: the couch may be moving. Not a
                # refusal: STOP and latch, like any loss of control during motion.
                self._moved_under.add(p.id)
                self.trip(f"GO not acknowledged by the couch: {exc}", S.FAULT, actor.user,
                           what="go not acknowledged")
                raise CommandError(f"move not started: {exc}") from None
            if consumed:
                self._moved_under.add(p.id)  # TARGET, maybe GO, went out
                # A TARGET or GO the controller did not answer (a silent line): what
                # it did meanwhile, its watchdog faulting it say, is read once the
                # line answers again (a few tries, about a second).
                self.room.spawn(self._read_couch(retries=4))
                # TARGET (and maybe GO) went out: stop, and the confirmation is spent.
                self.room.stop_couch_now()
                if self.room.workflow.state == S.CONFIRMED:
                    # p is the confirmed proposal unless a new one superseded it meanwhile;
                    # either way the room's confirmation is spent by this STOP.
                    if p.can(PS.PROPOSED):
                        p.to(PS.PROPOSED)
                        p.confirmation = None
                    self.room.to(S.PROPOSED, f"move not started: {exc}", actor.user)
                # else a trip (STOPPED/FAULT) during the gate's awaits already latched
                # the room and spent the confirmation: nothing more to change.
            # Refused before anything was sent: nothing to stop, and the confirmation
            # stays valid (a STOP here would make the next GO look like a resumption).
            raise CommandError(f"move not started: {exc}") from None
        self._moved_under.add(p.id)
        if not p.can(PS.MOVING):
            # A new proposal superseded this one while its GO was on its way: stop, and
            # spend whatever confirmation the room holds now (it predates this STOP).
            self.trip(f"proposal {p.id} superseded while its move started", S.STOPPED,
                      actor.user)
        if self.room.workflow.state != S.CONFIRMED:
            # Tripped (interlock, implausible report, ...) while the GO was on its way:
            # the trip already wrote STOP and spent the confirmation.
            self.room.stop_couch_now()
            self.room.store.finish_move(c.id, "interrupted", {"reason": self.room.workflow.reason})
            raise CommandError(f"move stopped as it started: room is {self.room.workflow.state} "
                               f"({self.room.workflow.reason})")
        p.to(PS.MOVING)
        self.room.active = ActiveMove(started, actor.user)
        self.room.to(S.MOVING, f"moving to {p.target}", actor.user)
        self.room.wake.set()
        return self.room.progress()

    async def release(self, actor: Actor) -> Reply:
        self.room.hold.mono = None
        if self.room.workflow.state == S.MOVING:
            self.trip("hold-to-run released by " + actor.user, S.STOPPED, actor.user)
        return self.room.progress()

    async def stop(self, actor: Actor, reason: str = "") -> Reply:
        # Stop is accepted in every state, from every role but viewer (checked by the
        # facade), before anything else.
        self.room.stop_couch_now()
        why = f"stop by {actor.user}" + (f": {reason}" if reason else "")
        self.room.audit("stop", actor.user, reason=reason, state=str(self.room.workflow.state),
                        via=actor.via)
        if self.room.workflow.state in (S.MOVING, S.VERIFYING, S.CONFIRMED, S.AWAITING_APPROVAL):
            self.trip(why, S.STOPPED, actor.user)
        try:
            await self.room.couch.stop()
        except Exception as exc:  # noqa: BLE001 - stop must answer; any failure latches FAULT
            self.room.audit("fault", "system", what="stop acknowledgement", error=str(exc))
            if self.room.workflow.can(S.FAULT):
                self.room.to(S.FAULT, f"stop not acknowledged by couch: {exc}")
        return self.room.snapshot()

    async def reset(self, actor: Actor) -> Reply:
        if self.room.workflow.state not in LATCHED:
            raise self.room.refuse(actor, "reset",
                                   f"nothing to reset in state {self.room.workflow.state}")
        if not self.room.couch_link_ok():
            raise self.room.refuse(actor, "reset", "couch link is down")
        try:
            await self.room.couch.reset()
            await self.room.couch.status()
        except Exception as exc:  # noqa: BLE001 - any couch failure is a one-line refusal
            raise self.room.refuse(actor, "reset", f"couch did not reset: {exc}") from None
        self.room.hold.mono = self.room.hold.user = None
        self.room.audit("reset", actor.user, state=str(self.room.workflow.state))
        self.room.to(S.READY if self.room.session else S.STANDBY, f"reset by {actor.user}",
                     actor.user)
        # An interrupted proposal may be confirmed afresh; nothing is resumed by itself.
        p = self.room.current
        if p is not None and p.status is PS.INTERRUPTED and self.room.session is not None:
            p.confirmation = None
            self.room.to(S.PROPOSED, f"{p.id} interrupted; confirm again to continue", actor.user)
        return self.room.snapshot()

    # ---------------------------------------------------------------- trips
    def trip(self, reason: str, new_state: RoomState = S.FAULT, actor: str = "system",
              **details: object) -> None:
        """Stop motion now; then record why (with `details`) and latch the room."""
        self.room.stop_couch_now()
        self.room.hold.mono = None
        if self._tripping:
            return
        self._tripping = True
        try:
            move = self.room.active
            self.room.active = None
            p = self.room.current
            if move is not None:
                self.room.store.finish_move(move.started.confirmation_id, "interrupted",
                                            {"reason": reason})
                if p is not None:
                    # The move's proposal is the current one, MOVING; the check only
                    # keeps the trip from ever raising after STOP went out.
                    if p.can(PS.INTERRUPTED):
                        p.to(PS.INTERRUPTED)
                    p.note("interrupted", reason=reason)
            elif p is not None and p.status in (PS.CONFIRMED, PS.AWAITING_APPROVAL):
                # A stopped confirmation is spent: recovery needs a fresh one.
                p.to(PS.PROPOSED)
                p.confirmation = None
            self.room.audit("fault" if new_state == S.FAULT else "motion_stopped", actor,
                            reason=reason, state=str(self.room.workflow.state),
                            confirmation_id=move.started.confirmation_id if move else None,
                            **details)
            if self.room.workflow.can(new_state):
                self.room.to(new_state, reason, actor)
        finally:
            self._tripping = False

    def on_console_link(self, connected: bool) -> None:
        """The MQTT console link changed; without it a console's heartbeats cannot arrive."""
        if connected:
            self.room.publish_state()
            return
        self.room.audit("fault", "system", what="console broker link lost",
                        state=str(self.room.workflow.state))
        if self.room.workflow.state == S.MOVING and (self.room.hold.via or "").startswith("mqtt"):
            self.trip("console broker link lost: hold-to-run cannot arrive", S.STOPPED)

    def _on_plc_change(self, snap: PlcSnapshot | None = None) -> None:
        """Called by the PLC driver on any input change: trip at once when needed."""
        if self.room.workflow.state == S.MOVING or self._go_unanswered():
            # GO written, its answer not in yet (lost on a cut line, it takes the
            # 250 ms reply timeout): the couch may be moving, so everything that
            # stops a move stops this one, the arms and hold-to-run included.
            self._check_plc_during_motion(snap)
        elif self.room.workflow.state == S.CONFIRMED and self.room.plc is not None:
            # An interlock opening between confirmation and motion spends the
            # confirmation: motion after it needs a fresh, explicit one (issue 5).
            # Hold-to-run and the imager arms are not interlocks here: before the
            # move they are legitimately released / extended.
            if snap is None:
                snap = self.room.plc.snapshot()
            open_il = self.room.plc.open_interlocks(snap)
            if open_il:
                self.trip("interlock open before motion: " + ", ".join(open_il), S.STOPPED)
        elif self.room.workflow.state == S.SERVICE and self.room.plc is not None:
            # A jog in progress stops on any open interlock or a released enable, like a move.
            if snap is None:
                snap = self.room.plc.snapshot()
            if self.room.plc.open_interlocks(snap) or not self.room.plc.motion_enable_pressed(snap):
                self.room.stop_couch_now()
        elif self.room.workflow.state == S.MONITORING or self.room.beam_hold_required():
            self.monitoring_plc_check()  # between beams too: the beam must stay held
        # Then record the change (after any STOP went out).
        if snap is not None:
            view: JsonObject = {"link_ok": snap.link_ok, "link_reason": snap.link_reason,
                    **{n: st.closed for n, st in snap.inputs.items()},
                    "arms_moving": any(snap.arms_moving.values()),
                    "fault_code": snap.fault_code}
            if view != self._last_interlocks:
                changed = {k: v for k, v in view.items() if self._last_interlocks.get(k) != v}
                self._last_interlocks = view
                self.room.audit("interlock", "system", changed=changed)
        self.room.publish_state()

    # ----------------------------------------------------------- supervision
    def _check_plc_during_motion(self, snap: PlcSnapshot | None = None) -> bool:
        """Trip on anything the PLC reports that forbids motion; True if it tripped.

        `snap`: the picture the PLC driver is announcing (it was built from the read
        that brought the change, microseconds ago); judged as it is, the verdict
        cached for it is reused and the STOP goes out without a second picture
        being built and judged first. None: a picture taken now."""
        if self.room.plc is None:
            return False
        if snap is None:
            snap = self.room.plc.snapshot()
        open_il = self.room.plc.open_interlocks(snap)
        if open_il:
            self.trip("interlock open: " + ", ".join(open_il))
            return True
        parked, arms_moving = self.room.plc.arms_state(snap)
        if not parked or arms_moving:
            self.trip("imager arm left its parked position during couch motion")
            return True
        if (self.room.config.motion.require_plc_motion_enable
                and not self.room.plc.motion_enable_pressed(snap)):
            self.trip("motion enable released", S.STOPPED)
            return True
        return False

    def _go_unanswered(self) -> bool:
        return self.room.workflow.state == S.CONFIRMED and self.gate.go_in_flight

    def _check_move_conditions(self) -> bool:
        """The checks of a move that need no active move: couch link, PLC, hold-to-run.
        Each period while MOVING, and while a GO's answer is awaited (the couch may
        already move). True if it tripped."""
        if not self.room.couch_link_ok():
            self.trip("couch link lost")
            return True
        if self._check_plc_during_motion():
            return True
        if not self.room.hold.within(self.room.config.motion.hold_timeout_s):
            self.trip("hold-to-run heartbeat lost", S.STOPPED)
            return True
        return False

    def _check_motion(self) -> None:
        if self.room.workflow.state != S.MOVING or self.room.active is None:
            return
        if self._check_move_conditions():
            return
        timeout = self.room.config.motion.move_timeout_s
        if time.monotonic() - self.room.active.started.started_mono > timeout:
            self.trip(f"move did not finish within {self.room.config.motion.move_timeout_s:.0f} s")

    async def _read_couch(self, retries: int | None = None) -> None:
        """Read the controller and tell the watch (a FAULT at rest latches the room)."""
        try:
            status = await self.room.couch.status(retries=retries)
        except Exception:  # noqa: BLE001 - a failed read: the link watch reports it
            return
        # The link tells the watch of every status it reads; said again here so that
        # this check does not rest on that (a report seen twice changes nothing).
        self.watch.on_couch_event(status)

    async def _supervise(self) -> None:
        period = self.room.config.motion.supervision_period_s
        while True:
            if self.room.workflow.state == S.MOVING:
                self._check_motion()
                await asyncio.sleep(period)
            elif self._go_unanswered():
                self._check_move_conditions()
                await asyncio.sleep(period)
            else:
                if (self.room.workflow.state not in (S.OFFLINE, S.FAULT)
                        and not self.room.couch_link_ok()):
                    if self.room.workflow.can(S.FAULT) and self.room.workflow.state in (
                            S.CONFIRMED, S.VERIFYING):
                        self.trip("couch link lost")
                    elif self.room.workflow.can(S.OFFLINE):
                        self.room.to(S.OFFLINE, "couch link lost")
                elif self.room.workflow.state == S.OFFLINE and self.room.couch_link_ok():
                    self.room.to(S.STANDBY, "couch link up")
                    # What the controller did while the line was down (its watchdog
                    # faults it when heartbeats stop): a FAULT in this status latches
                    # the room (daemon/couch_watch.py), so nothing is proposed on it.
                    self.room.spawn(self._read_couch())
                self.watch.probe_settled()
                if self.watch.awaiting_rest:
                    timeout = SETTLE_PROBE_S  # the couch not yet seen at rest: keep asking
                elif self.room.workflow.state in _IDLE_STATES:
                    # Nothing can move, and whatever changes that (a state change, a
                    # couch link change) sets room.wake: no timer needed.
                    timeout = _IDLE_FALLBACK_S
                else:
                    timeout = _LINK_CHECK_S
                self.room.wake.clear()
                await _wait_event(self.room.wake, timeout)

    async def _track_motion(self) -> None:
        """Poll the couch while moving; detect arrival and verify it."""
        while True:
            if self.room.workflow.state != S.MOVING or self.room.active is None:
                # A move starts with a state change to MOVING, which sets room.wake
                # (Room.to; `hold` sets it too): the timeout is only a fallback.
                self.room.wake.clear()
                await _wait_event(self.room.wake, _IDLE_FALLBACK_S)
                continue
            active = self.room.active
            try:
                status = await self.room.couch.status()
            except Exception as exc:  # noqa: BLE001 - supervision must outlive any couch error
                if self.room.workflow.state == S.MOVING:
                    self.trip(f"couch status failed during motion: {exc}")
                continue
            if self.room.active is not active or self.room.workflow.state != S.MOVING:
                continue
            if status.state == "FAULT":
                self.trip(f"couch controller fault {status.fault_code}")
                continue
            if status.state == "IDLE" and not any(status.moving):
                await self._verify_arrival(active, status)
                continue
            self.room.publish_state()
            await asyncio.sleep(0.04)

    async def _verify_arrival(self, active: ActiveMove, status: CouchStatus) -> None:
        self.room.to(S.VERIFYING, "couch reports motion complete")
        self.room.active = None
        self.room.hold.mono = None
        target = active.started.target
        pose = status.pose
        err = pose.minus(target)
        tol_mm = self.room.config.motion.arrival_tolerance_mm
        tol_deg = self.room.config.motion.arrival_tolerance_deg
        missed = [
            f"{a} {err.get(a):+.3f} {UNITS[a]} off "
            f"(deadband {tol_deg if a in ROTATION_AXES else tol_mm} {UNITS[a]})"
            for a in AXES
            if abs(err.get(a)) > (tol_deg if a in ROTATION_AXES else tol_mm)
        ]
        p = self.room.current
        result: JsonObject = {
            "proposal_id": active.started.proposal_id,
            "confirmation_id": active.started.confirmation_id,
            "target": pose_json(target),
            "reached": pose_json(pose),
            "error": pose_json(err),
            "outcome": "missed_target" if missed else "reached",
        }
        self.room.last_result = result
        if missed:
            self.room.store.finish_move(active.started.confirmation_id, "failed", result)
            if p is not None:
                p.to(PS.FAILED)
            self.room.audit("fault", "system", what="missed target", details=missed, **result)
            self.room.to(S.FAULT, "couch missed target: " + "; ".join(missed))
            return
        self.room.store.finish_move(active.started.confirmation_id, "completed", result)
        if p is not None:
            p.to(PS.COMPLETED)
        self.room.audit("verified", "system", **result)
        self.room.to(S.DONE, f"reached target within {tol_mm} mm / {tol_deg} deg")
        if self.outbox is not None and p is not None and p.source != QA_SOURCE:
            # Off the event loop and never failing here: a REG not written is audited.
            # (A QA move of the phantom is no treatment: nothing to record and verify.)
            c = p.confirmation
            self.room.spawn(self.outbox.put(VerifiedRegistration.of(
                self.room.config.room, p, active.started.confirmation_id,
                c.user if c is not None else active.user, time.time())))


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until `event` is set or `timeout` passed, whichever comes first.

    asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation
    that arrives as the event is set (a stop sets it, and igrtd's shutdown
    cancels the loop right after), and the supervision task then never ends."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
