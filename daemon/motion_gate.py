"""The one choke point through which every couch or imager motion leaves igrtd.

Nothing else in the daemon calls the motion methods of a device driver
(`send_target`, `go`, `jog`, arm commands); a test scans the source tree for
that. Each motion is authorised by the pure rule in `safety.motion` against a
fresh snapshot of the room taken at the moment of sending, and once more just
before GO, because time passes while the controller echoes the target.

Couch moved since imaging (issue 11, item 2): a correction is relative to the
couch pose at imaging, so the gate refuses when the couch is no longer where it
was imaged: it may have been jogged in service mode or pushed by hand between
imaging and confirmation. Before TARGET it judges the last status igrtd holds
(a couch already known to have moved: nothing is sent); before GO, the pose and
moving axes the controller's TARGET_ECHO carries, sampled when the TARGET
arrived, so the pose checked is never older than the TARGET. Reading the couch
before TARGET as well cost a status round trip (1.2 ms at 460800 baud) on every
confirmation's way to GO and vouched for nothing the pre-GO check does not; the
ARMED push the controller used to send before the echo, which the pre-GO check
read until the echo carried the pose, cost 0.53 ms of the 921600 baud line
(issue 13, item 6).

Controller not ready (found by bench/confirm_bench.py): the controller takes
TARGET and GO only in IDLE or ARMED. Its own heartbeat watchdog can fault it
while the room is idle (igrtd's loop held up past 250 ms between heartbeats on
a loaded machine), which igrtd hears in a pushed STATUS but latches no room
state for; a TARGET then came back NAK bad_state after the claim, spending the
confirmation and STOPping the couch. The rule refuses on the state of the last
status igrtd holds instead: nothing is sent and the confirmation stays valid.

Durability: the claim and every audit record before a GO, jog or arm command
are durable before it is sent; the sync runs in the group commit thread while
TARGET and its echo are on the wire (daemon/group_commit.py).

Uncommanded motion (issue 11, item 4): `on_motion_sent` is called just before
a GO or JOG is written, so the room can tell motion it commanded (still
running, or winding down after a STOP) from motion nobody commanded.

Apply-once (R-IDEMP): the move is claimed in the persistent store *before*
any byte is sent, so a crash between claim and GO can never lead to a second
GO for the same confirmation after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daemon.group_commit import DurabilityError
from daemon.ports import CorrectionStorePort, CouchPort, ImagerArmsPort
from drivers.couch import CouchRefused, TargetEcho
from safety.couch_model import CouchModel
from safety.motion import MotionDecision, MotionRequest, authorize_motion
from safety.pose import AXES, UNITS, Pose

log = logging.getLogger("igrt.motion")

# The controller reports positions in integer micrometres / micro-degrees; an
# echo that differs from the requested target by more than this is not the
# move that was confirmed.
ECHO_TOLERANCE = 0.002


class MotionRefused(Exception):
    def __init__(self, reasons: list[str], *, go_unanswered: bool = False) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        # GO was written and neither ACKed nor NAKed (timeout, link lost): the couch
        # may be moving. The caller must treat it as a fault, not a refusal.
        self.go_unanswered = go_unanswered


@dataclass(frozen=True, slots=True)
class MotionFacts:
    """The room as it is at the moment a motion is authorised (taken afresh each time)."""

    # The gate is asked while the workflow is in the state that permits the kind of
    # motion: CONFIRMED for a move, SERVICE for a jog.
    room_state: str
    current: Pose | None  # couch pose of the latest status; None: never reported
    open_interlocks: tuple[str, ...]  # interlocks proper, PLC health, couch link
    couch_moving: bool
    imager_arms_parked: bool
    imager_moving: bool
    hold_to_run_fresh: bool
    # Between beams (a monitoring run alive): the PLC's beam-hold read-back must be True.
    beam_hold_required: bool = False
    beam_held: bool | None = None
    correction_refusal: str | None = None  # a correction between beams gone stale


@dataclass(frozen=True)
class ConfirmationTicket:
    """What the workflow hands the gate: one confirmed correction."""

    confirmation_id: str
    proposal_id: str
    user: str
    target: Pose
    confirmed_at_mono: float
    deadline_mono: float
    couch_at_imaging: Pose | None = None  # the correction is relative to it
    # A GO of this correction already went out (the move was interrupted): the couch
    # may be part of the way from couch_at_imaging to the target.
    resumes_interrupted: bool = False


@dataclass(frozen=True)
class StartedMove:
    confirmation_id: str
    proposal_id: str
    echo_id: int
    target: Pose
    started_mono: float
    start: Pose | None = None  # couch pose reported just before GO


FactsFn = Callable[[str], MotionFacts]
# (proposal id or None for a jog, couch pose now, target) -> why the collision model
# refuses the move ([] if it may); daemon/collision_guard.py via the Room.
CollisionFn = Callable[[str | None, Pose | None, Pose], list[str]]


def _no_collision_model(_pid: str | None, _current: Pose | None, _target: Pose) -> list[str]:
    return []


async def _already_durable() -> None:
    return None


def _forget(durable: asyncio.Future[None]) -> None:
    """A barrier no GO waits for any more: cancelled, or its failure retrieved (it was
    reported already, or is moot)."""
    if not durable.done():
        durable.cancel()
    elif not durable.cancelled():
        durable.exception()


def _not_durable(what: str, exc: DurabilityError) -> str:
    """The refusal of a motion whose preceding records could not be made durable."""
    return f"the records that must precede {what} are not durable: {exc}"

AuditFn = Callable[..., None]


class MotionGate:
    def __init__(
        self,
        couch: CouchPort,
        store: CorrectionStorePort,
        audit: AuditFn,
        facts: FactsFn,
        *,
        model: CouchModel,
        target_validity_ms: int,
        arms: ImagerArmsPort | None = None,
        imaging_tolerance_mm: float = 0.5,
        imaging_tolerance_deg: float = 0.2,
        on_motion_sent: Callable[[], None] | None = None,
        barrier: Callable[[], Awaitable[None]] | None = None,
        go_barrier: Callable[[], Awaitable[None]] | None = None,
        collision: CollisionFn | None = None,
    ) -> None:
        self._couch = couch
        self._collision = collision or _no_collision_model
        # Everything audited and stored so far durable (daemon/group_commit.py); with
        # stores that sync each write themselves, nothing to wait for.
        self._barrier = barrier or _already_durable
        # A GO's: the audit log alone, which holds the apply-once claim's record that
        # start-up recovers the claim from if the state store lost it in a power loss
        # (daemon/claim_recovery.py); the store's WAL is synced after it, off the path.
        self._go_barrier = go_barrier or self._barrier
        self._imaging_tol = (imaging_tolerance_mm, imaging_tolerance_deg)
        self._on_motion_sent = on_motion_sent
        # From the moment GO is written until move_couch returns: the controller
        # reports the move (IDLE as the echo is used, then MOVING) before its ACK
        # arrives; `in_flight` is (start, target) for the plausibility check.
        self.go_in_flight = False
        self.in_flight: tuple[Pose, Pose] | None = None
        self._arms = arms
        self._store = store
        self._audit = audit
        self._facts = facts
        self._model = model
        self._validity_ms = target_validity_ms

    def _authorize(self, kind: str, ticket: ConfirmationTicket | None, target: Pose | None,
                   already_executed: bool = False) -> MotionDecision:
        return authorize_motion(self._request(kind, ticket, target, already_executed))

    def _request(self, kind: str, ticket: ConfirmationTicket | None, target: Pose | None,
                 already_executed: bool = False, armed: TargetEcho | None = None
                 ) -> MotionRequest:
        facts = self._facts(kind)
        # The controller's own state, from the status the facts' pose came from.
        status = self._couch.latest_status
        current, couch_moving = facts.current, facts.couch_moving
        couch_state, couch_fault = ((status.state, status.fault_code) if status is not None
                                    else (None, "none"))
        if armed is not None and (status is None or status.received_at < armed.received_at):
            # Before GO: the couch as the controller armed (the echo's pose and moving
            # axes, sampled when the TARGET arrived), unless a status came after it.
            # An echo is only ever sent in ARMED, and never in FAULT.
            current, couch_moving = armed.pose, any(armed.moving)
            couch_state, couch_fault = "ARMED", "none"
        req = MotionRequest(
            kind=kind,
            room_state=facts.room_state,
            target=target,
            current=current,
            confirmation_id=ticket.confirmation_id if ticket else None,
            confirmed_at=ticket.confirmed_at_mono if ticket else None,
            already_executed=already_executed,
            deadline=ticket.deadline_mono if ticket else None,
            now=time.monotonic(),
            open_interlocks=facts.open_interlocks,
            couch_moving=couch_moving,
            imager_arms_parked=facts.imager_arms_parked,
            imager_moving=facts.imager_moving,
            hold_to_run_fresh=facts.hold_to_run_fresh,
            model=self._model,
            couch_at_imaging=ticket.couch_at_imaging if ticket else None,
            imaging_path_end=ticket.target if ticket and ticket.resumes_interrupted else None,
            imaging_tolerance_mm=self._imaging_tol[0],
            imaging_tolerance_deg=self._imaging_tol[1],
            couch_state=couch_state,
            couch_fault=couch_fault,
            beam_hold_required=facts.beam_hold_required,
            beam_held=facts.beam_held,
            correction_refusal=facts.correction_refusal,
        )
        return req

    def _motion_sent(self) -> None:
        if self._on_motion_sent is not None:
            self._on_motion_sent()

    def _refuse(self, what: str, ticket: ConfirmationTicket | None, reasons: list[str]) -> None:
        self._audit("motion_refused", ticket.user if ticket else "system", what=what,
                    confirmation_id=ticket.confirmation_id if ticket else None, reasons=reasons)
        raise MotionRefused(reasons)

    async def move_couch(self, ticket: ConfirmationTicket) -> StartedMove:
        """TARGET -> echo check -> re-authorise -> GO. Returns once GO was accepted."""
        try:
            return await self._move_couch(ticket)
        finally:
            self.go_in_flight = False
            self.in_flight = None

    async def _move_couch(self, ticket: ConfirmationTicket) -> StartedMove:
        # First on what igrtd already knows of the couch, without a byte on the wire: a
        # couch already seen away from its imaging pose (or moving, or in FAULT) is
        # refused here, nothing sent, the confirmation kept. A last status in another
        # state than IDLE or ARMED may be stale (the controller pushes a state change
        # once, and a silent line loses it): that one is read afresh first.
        latest = self._couch.latest_status
        if latest is None or latest.state not in ("IDLE", "ARMED"):
            with contextlib.suppress(Exception):  # unreadable: the rule refuses on what is known
                await self._couch.status()
        first = self._request("couch_move", ticket, ticket.target)
        decision = authorize_motion(first)
        if not decision.allowed:
            self._refuse("couch_move", ticket, decision.reasons)
        # The path against the gantry and the arms as they are now (issue 17).
        collision = self._collision(ticket.proposal_id, first.current, ticket.target)
        if collision:
            self._refuse("couch_move", ticket, collision)
        self._audit("command", ticket.user, command="couch_target",
                    confirmation_id=ticket.confirmation_id, proposal_id=ticket.proposal_id,
                    target=ticket.target.as_dict(), validity_ms=self._validity_ms)
        try:
            target_sent = self._couch.start_target(ticket.target, self._validity_ms)
        except Exception as exc:  # the port went away: nothing was sent, nothing claimed
            self._audit("fault", ticket.user, what="couch_move", error=str(exc),
                        confirmation_id=ticket.confirmation_id)
            raise MotionRefused([f"couch did not accept the move: {exc}"]) from exc
        # The claim's audit record (`couch_target`, just written) and every record
        # before it become durable while TARGET and its echo are on the wire; GO waits
        # for them (daemon/group_commit.py). Asked for now, the sync starts now.
        durable = asyncio.ensure_future(self._go_barrier())
        # The apply-once claim, made while TARGET and its echo are on the wire (issue 13,
        # item 6): TARGET moves nothing (the controller only arms it, for validity_ms),
        # GO is what moves, and GO waits below until the claim is durable (in the audit
        # log, which start-up recovers it from: daemon/claim_recovery.py). A crash
        # before that leaves at most an armed target that expires: never a second move.
        try:
            claimed = self._store.claim_move(ticket.confirmation_id, ticket.proposal_id,
                                             ticket.target.as_dict())
        except BaseException:
            target_sent.cancel()  # no GO will follow: the armed target expires
            _forget(durable)
            raise
        if not claimed:
            target_sent.cancel()
            _forget(durable)
            self._refuse("couch_move", ticket,
                         [(f"confirmation {ticket.confirmation_id} was already executed; "
                           "a confirmed correction applies at most once")])
        go_written = False
        try:
            echo = await target_sent
            mismatch = [
                f"{a} echoed {echo.target.get(a):.3f} {UNITS[a]} vs confirmed "
                f"{ticket.target.get(a):.3f} {UNITS[a]}"
                for a in AXES
                if abs(echo.target.get(a) - ticket.target.get(a)) > ECHO_TOLERANCE
            ]
            if mismatch:
                raise MotionRefused(["controller echo differs from the confirmed target: "
                                     + ", ".join(mismatch)])
            try:
                await durable
            except DurabilityError as exc:
                raise MotionRefused([_not_durable("GO", exc)]) from None
            # Where the couch is now: the echo says where it was, and which axes
            # moved, when the TARGET arrived (a status pushed since, if any, is newer
            # and counts instead). A couch jogged or pushed by hand since imaging is
            # refused here, before GO.
            req = self._request("couch_move", ticket, ticket.target, armed=echo)
            decision = authorize_motion(req)
            if not decision.allowed:
                raise MotionRefused(decision.reasons)
            collision = self._collision(ticket.proposal_id, req.current, ticket.target)
            if collision:  # the gantry or the arms moved since TARGET
                raise MotionRefused(collision)
            start = req.current
            if start is not None:
                self.in_flight = (start, ticket.target)
            self.go_in_flight = go_written = True
            self._motion_sent()
            await self._couch.go(echo.echo_id)
        except MotionRefused as exc:
            self._store.finish_move(ticket.confirmation_id, "failed", {"reasons": exc.reasons})
            self._refuse("couch_move", ticket, exc.reasons)
            raise  # unreachable: _refuse raises
        except Exception as exc:
            # Timeouts, NAKs, link loss: the move did not start (or may have; the
            # supervisor stops the couch either way). Never retried.
            self._store.finish_move(ticket.confirmation_id, "failed", {"error": str(exc)})
            self._audit("fault", ticket.user, what="couch_move", error=str(exc),
                        confirmation_id=ticket.confirmation_id)
            raise MotionRefused([f"couch did not accept the move: {exc}"],
                                go_unanswered=go_written and not isinstance(exc, CouchRefused)
                                ) from exc
        finally:
            _forget(durable)
        self._store.finish_move(ticket.confirmation_id, "sent", {"echo_id": echo.echo_id})
        started = StartedMove(ticket.confirmation_id, ticket.proposal_id, echo.echo_id,
                              ticket.target, time.monotonic(), start)
        self._audit("motion", ticket.user, motion="couch_go", echo_id=echo.echo_id,
                    confirmation_id=ticket.confirmation_id, target=ticket.target.as_dict())
        return started

    async def _durable(self, ticket: ConfirmationTicket | None, what: str) -> None:
        try:
            await self._barrier()
        except DurabilityError as exc:
            self._refuse(what, ticket, [_not_durable(what, exc)])

    async def jog(self, user: str, axis: str, velocity: float, duration_ms: int,
                  end_pose: Pose) -> None:
        """A short hold-to-run jog; `end_pose` (where it would end) is checked against limits."""
        req = self._request("couch_jog", None, end_pose)
        decision = authorize_motion(req)
        if not decision.allowed:
            self._refuse("couch_jog", None, decision.reasons)
        collision = self._collision(None, req.current, end_pose)
        if collision:
            self._refuse("couch_jog", None, collision)
        self._audit("motion", user, motion="couch_jog", axis=axis, velocity=velocity,
                    duration_ms=duration_ms)
        await self._durable(None, "couch_jog")
        self._motion_sent()
        await self._couch.jog(axis, velocity, duration_ms)

    async def move_arms(self, user: str, extend: bool) -> None:
        if self._arms is None:
            raise MotionRefused(["no imager arms are configured in this room"])
        decision = self._authorize("imager_arm", None, None)
        if not decision.allowed:
            self._refuse("imager_arm", None, decision.reasons)
        self._audit("motion", user, motion="imager_arms", extend=extend)
        await self._durable(None, "imager_arm")
        if extend:
            await self._arms.extend()
        else:
            await self._arms.retract()
