"""The one choke point through which every couch or imager motion leaves igrtd.

Nothing else in the daemon calls the motion methods of a device driver
(`send_target`, `go`, `jog`, arm commands); a test scans the source tree for
that. Each motion is authorised by the pure rule in `safety.motion` against a
fresh snapshot of the room taken at the moment of sending, and once more just
before GO, because time passes while the controller echoes the target.

Apply-once (R-IDEMP): the move is claimed in the persistent store *before*
any byte is sent, so a crash between claim and GO can never lead to a second
GO for the same confirmation after restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from safety.motion import MotionDecision, MotionRequest, authorize_motion
from safety.pose import AXES, UNITS, Pose

log = logging.getLogger("igrt.motion")

# The controller reports positions in integer micrometres / micro-degrees; an
# echo that differs from the requested target by more than this is not the
# move that was confirmed.
ECHO_TOLERANCE = 0.002


class MotionRefused(Exception):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class CouchMotion(Protocol):
    async def send_target(self, pose: Pose, validity_ms: int) -> Any: ...
    async def go(self, echo_id: int) -> None: ...
    async def jog(self, axis: str, velocity: float, duration_ms: int) -> None: ...


class ArmsMotion(Protocol):
    async def extend(self) -> None: ...
    async def retract(self) -> None: ...


@dataclass(frozen=True)
class ConfirmationTicket:
    """What the workflow hands the gate: one confirmed correction."""

    confirmation_id: str
    proposal_id: str
    user: str
    target: Pose
    confirmed_at_mono: float
    deadline_mono: float


@dataclass(frozen=True)
class StartedMove:
    confirmation_id: str
    proposal_id: str
    echo_id: int
    target: Pose
    started_mono: float


SnapshotFn = Callable[[str], dict[str, Any]]
AuditFn = Callable[..., None]


class MotionGate:
    def __init__(
        self,
        couch: CouchMotion,
        store: Any,
        audit: AuditFn,
        snapshot: SnapshotFn,
        *,
        model: Any,
        target_validity_ms: int,
        arms: ArmsMotion | None = None,
    ) -> None:
        self._couch = couch
        self._arms = arms
        self._store = store
        self._audit = audit
        self._snapshot = snapshot
        self._model = model
        self._validity_ms = target_validity_ms

    def _authorize(self, kind: str, ticket: ConfirmationTicket | None, target: Pose | None,
                   already_executed: bool = False) -> MotionDecision:
        facts = self._snapshot(kind)
        req = MotionRequest(
            kind=kind,
            room_state=facts["room_state"],
            target=target,
            current=facts.get("current"),
            confirmation_id=ticket.confirmation_id if ticket else None,
            confirmed_at=ticket.confirmed_at_mono if ticket else None,
            already_executed=already_executed,
            deadline=ticket.deadline_mono if ticket else None,
            now=time.monotonic(),
            open_interlocks=facts["open_interlocks"],
            couch_moving=facts["couch_moving"],
            imager_arms_parked=facts["imager_arms_parked"],
            imager_moving=facts["imager_moving"],
            hold_to_run_fresh=facts["hold_to_run_fresh"],
            model=self._model,
        )
        return authorize_motion(req)

    def _refuse(self, what: str, ticket: ConfirmationTicket | None, reasons: list[str]) -> None:
        self._audit("motion_refused", ticket.user if ticket else "system", what=what,
                    confirmation_id=ticket.confirmation_id if ticket else None, reasons=reasons)
        raise MotionRefused(reasons)

    async def move_couch(self, ticket: ConfirmationTicket) -> StartedMove:
        """TARGET -> echo check -> re-authorise -> GO. Returns once GO was accepted."""
        decision = self._authorize("couch_move", ticket, ticket.target)
        if not decision.allowed:
            self._refuse("couch_move", ticket, decision.reasons)
        # Claim before sending anything: a crash from here on never re-sends.
        if not self._store.claim_move(ticket.confirmation_id, ticket.proposal_id,
                                      ticket.target.as_dict()):
            self._refuse("couch_move", ticket,
                         [f"confirmation {ticket.confirmation_id} was already executed; "
                          "a confirmed correction applies at most once"])
        self._audit("command", ticket.user, command="couch_target",
                    confirmation_id=ticket.confirmation_id, proposal_id=ticket.proposal_id,
                    target=ticket.target.as_dict(), validity_ms=self._validity_ms)
        try:
            echo = await self._couch.send_target(ticket.target, self._validity_ms)
            mismatch = [
                f"{a} echoed {echo.target.get(a):.3f} {UNITS[a]} vs confirmed "
                f"{ticket.target.get(a):.3f} {UNITS[a]}"
                for a in AXES
                if abs(echo.target.get(a) - ticket.target.get(a)) > ECHO_TOLERANCE
            ]
            if mismatch:
                raise MotionRefused(["controller echo differs from the confirmed target: "
                                     + ", ".join(mismatch)])
            decision = self._authorize("couch_move", ticket, ticket.target)
            if not decision.allowed:
                raise MotionRefused(decision.reasons)
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
            raise MotionRefused([f"couch did not accept the move: {exc}"]) from exc
        self._store.finish_move(ticket.confirmation_id, "sent", {"echo_id": echo.echo_id})
        started = StartedMove(ticket.confirmation_id, ticket.proposal_id, echo.echo_id,
                              ticket.target, time.monotonic())
        self._audit("motion", ticket.user, motion="couch_go", echo_id=echo.echo_id,
                    confirmation_id=ticket.confirmation_id, target=ticket.target.as_dict())
        return started

    async def jog(self, user: str, axis: str, velocity: float, duration_ms: int,
                  end_pose: Pose) -> None:
        """A short hold-to-run jog; `end_pose` (where it would end) is checked against limits."""
        decision = self._authorize("couch_jog", None, end_pose)
        if not decision.allowed:
            self._refuse("couch_jog", None, decision.reasons)
        self._audit("motion", user, motion="couch_jog", axis=axis, velocity=velocity,
                    duration_ms=duration_ms)
        await self._couch.jog(axis, velocity, duration_ms)

    async def move_arms(self, user: str, extend: bool) -> None:
        if self._arms is None:
            raise MotionRefused(["no imager arms are configured in this room"])
        decision = self._authorize("imager_arm", None, None)
        if not decision.allowed:
            self._refuse("imager_arm", None, decision.reasons)
        self._audit("motion", user, motion="imager_arms", extend=extend)
        if extend:
            await self._arms.extend()
        else:
            await self._arms.retract()
