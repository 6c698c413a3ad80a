"""The room's workflow state machine.

Every state change goes through `Workflow.to()`, which refuses transitions
that are not in the table, so a bug elsewhere cannot, for example, jump from
PROPOSED straight to MOVING. Stop is handled separately: it is accepted in
every state (see RoomService.stop), and a stop during motion always lands in
STOPPED or FAULT, from which only an explicit reset leads back.

    OFFLINE --couch link up--> STANDBY --session open--> READY
    READY --propose--> PROPOSED --confirm--> CONFIRMED (or AWAITING_APPROVAL
          --approve--> CONFIRMED)
    CONFIRMED --hold-to-run + all checks--> MOVING --arrived--> VERIFYING
    VERIFYING --read back within deadband--> DONE --propose--> PROPOSED ...
    MOVING --stop / interlock / hold lost / link lost--> STOPPED | FAULT
    STOPPED | FAULT --reset--> READY (fresh confirmation needed)
    STANDBY | READY | DONE --enter_service--> SERVICE --exit_service--> STANDBY
    READY | DONE --monitor_start--> MONITORING --monitor_stop--> READY | DONE
    MONITORING --room PLC link lost--> FAULT
    MONITORING --target drifted and stayed off--> PROPOSED (a between-beam correction,
          beam held; daemon/between_beams.py) --target back--> MONITORING
    PROPOSED | AWAITING_APPROVAL --drift withdrawn--> MONITORING
    ... CONFIRMED --> MOVING --> VERIFYING --> DONE --> MONITORING (resumes, beam held
          until the target is seen in tolerance again)
    any state but FAULT --uncommanded couch motion--> FAULT (issue 11: a runaway
          latches; MOVING --implausible reported position--> FAULT likewise)
MONITORING is beam-on with intrafraction imaging: no couch or imager-arm
motion is permitted in it (safety.motion.DEFAULT_MOTION_STATES omits it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class RoomState(StrEnum):
    OFFLINE = "OFFLINE"
    STANDBY = "STANDBY"
    READY = "READY"
    PROPOSED = "PROPOSED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    CONFIRMED = "CONFIRMED"
    MOVING = "MOVING"
    VERIFYING = "VERIFYING"
    DONE = "DONE"
    STOPPED = "STOPPED"
    FAULT = "FAULT"
    SERVICE = "SERVICE"  # service engineer at work; clinical workflow locked out
    MONITORING = "MONITORING"  # beam on, intrafraction kV monitoring; nothing moves


S = RoomState

# No session open and nothing can move: igrtd talks to its devices at their
# slowest rates here (daemon/plc_link.py, daemon/main.py). Motion needs a session,
# and every motion state is reached through states outside this set.
STANDBY_STATES: frozenset[str] = frozenset({S.STANDBY})
_IDLE_WITH_SESSION = {S.READY, S.PROPOSED, S.AWAITING_APPROVAL, S.CONFIRMED, S.DONE}

TRANSITIONS: dict[RoomState, frozenset[RoomState]] = {
    S.OFFLINE: frozenset({S.STANDBY, S.FAULT}),
    S.STANDBY: frozenset({S.READY, S.OFFLINE, S.FAULT, S.SERVICE}),
    S.READY: frozenset({S.PROPOSED, S.STANDBY, S.OFFLINE, S.FAULT, S.DONE, S.SERVICE,
                        S.MONITORING}),
    S.PROPOSED: frozenset({S.PROPOSED, S.AWAITING_APPROVAL, S.CONFIRMED, S.READY, S.DONE,
                           S.STANDBY, S.OFFLINE, S.FAULT, S.MONITORING}),
    # STOPPED too: a STOP while a confirmation awaits its second approval spends that
    # confirmation and latches like a STOP in CONFIRMED (without it the room stayed
    # AWAITING_APPROVAL with a proposal no longer awaiting anything: stuck).
    S.AWAITING_APPROVAL: frozenset({S.CONFIRMED, S.PROPOSED, S.READY, S.STANDBY, S.OFFLINE,
                                    S.FAULT, S.STOPPED, S.MONITORING}),
    S.CONFIRMED: frozenset({S.MOVING, S.PROPOSED, S.READY, S.STANDBY, S.OFFLINE, S.FAULT,
                            S.STOPPED}),
    S.MOVING: frozenset({S.VERIFYING, S.STOPPED, S.FAULT, S.OFFLINE}),
    S.VERIFYING: frozenset({S.DONE, S.FAULT, S.STOPPED, S.OFFLINE}),
    S.DONE: frozenset({S.PROPOSED, S.READY, S.STANDBY, S.OFFLINE, S.FAULT, S.DONE, S.SERVICE,
                       S.MONITORING}),
    # Only monitor_stop, a fault or a between-beam correction (beam held) leave beam-on
    # monitoring (not a couch link change: the couch is not used while the beam is on).
    S.MONITORING: frozenset({S.READY, S.DONE, S.FAULT, S.PROPOSED}),
    S.SERVICE: frozenset({S.STANDBY, S.FAULT, S.OFFLINE}),
    S.STOPPED: frozenset({S.READY, S.FAULT, S.OFFLINE, S.STANDBY}),
    S.FAULT: frozenset({S.READY, S.STANDBY, S.OFFLINE}),
}

# States in which a new proposal may be made.
PROPOSABLE = frozenset(_IDLE_WITH_SESSION)
# States that need an explicit reset before anything else happens.
LATCHED = frozenset({S.STOPPED, S.FAULT})


class TransitionRefused(Exception):
    pass


@dataclass
class Workflow:
    state: RoomState = RoomState.OFFLINE
    reason: str = "starting"
    since: float = field(default_factory=time.time)

    def to(self, new: RoomState, reason: str) -> RoomState:
        if new not in TRANSITIONS[self.state]:
            raise TransitionRefused(f"state {self.state} cannot go to {new} ({reason})")
        old = self.state
        self.state, self.reason, self.since = new, reason, time.time()
        return old

    def can(self, new: RoomState) -> bool:
        return new in TRANSITIONS[self.state]
