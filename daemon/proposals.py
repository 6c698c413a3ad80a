"""Sessions, proposals and confirmations as the daemon holds them in memory.

A treatment session is what the room is set up for (patient, plan, frame of
reference, isocentre) and the imaging recorded in it. A proposal is one
registration turned into a planned couch target, bound to patient, plan,
frame of reference, imaging session and the couch pose at imaging. A
confirmation is one person's go-ahead for one proposal; each has its own id,
and a confirmation id is executed at most once.

`Proposal.status` is a second, smaller state machine next to the room's
(daemon/workflow.py): every change goes through `Proposal.to()`, which
refuses a transition that is not in `PROPOSAL_TRANSITIONS`.

    proposed --confirm--> awaiting_approval --approve--> confirmed
    proposed --confirm--> confirmed --first hold, GO accepted--> moving
    confirmed | awaiting_approval --stop / trip / expiry / move not started--> proposed
    moving --stop / trip--> interrupted --confirm afresh--> confirmed | awaiting_approval
    moving --arrived within deadband--> completed;  --missed target--> failed
    proposed | confirmed | awaiting_approval --new proposal, session change--> superseded
A proposal is made `proposed`, `refused` or `within_tolerance` (its verdict);
the last two, `completed`, `failed` and `superseded` are final.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from daemon.api import Binding
from daemon.jsontypes import JsonObject, JsonValue
from safety.correction import CorrectionPlan
from safety.policy import Verdict
from safety.pose import Pose

if TYPE_CHECKING:
    from daemon.collision_guard import CollisionView
    from safety.collision_config import PatientEnvelope

# The source of a QA session and of its moves (daemon/qa_workflow.py): the QA
# phantom, never a patient. Clinical commands refuse them and they refuse clinical
# ones; the daily-QA gate applies to every other source.
QA_SOURCE = "qa"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class ProposalStatus(StrEnum):
    PROPOSED = "proposed"
    AWAITING_APPROVAL = "awaiting_approval"
    CONFIRMED = "confirmed"
    MOVING = "moving"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    FAILED = "failed"
    REFUSED = "refused"
    WITHIN_TOLERANCE = "within_tolerance"
    SUPERSEDED = "superseded"


P = ProposalStatus
PROPOSAL_TRANSITIONS: dict[ProposalStatus, frozenset[ProposalStatus]] = {
    P.PROPOSED: frozenset({P.AWAITING_APPROVAL, P.CONFIRMED, P.SUPERSEDED}),
    P.AWAITING_APPROVAL: frozenset({P.CONFIRMED, P.PROPOSED, P.SUPERSEDED}),
    # Back to PROPOSED: the confirmation expired, was spent by a stop or a trip before
    # the move, or the move was not started after TARGET went out.
    P.CONFIRMED: frozenset({P.MOVING, P.PROPOSED, P.SUPERSEDED}),
    P.MOVING: frozenset({P.INTERRUPTED, P.COMPLETED, P.FAILED}),
    # An interrupted move is only ever continued under a fresh confirmation.
    P.INTERRUPTED: frozenset({P.AWAITING_APPROVAL, P.CONFIRMED}),
    P.COMPLETED: frozenset(),
    P.FAILED: frozenset(),
    P.REFUSED: frozenset(),
    P.WITHIN_TOLERANCE: frozenset(),
    P.SUPERSEDED: frozenset(),
}
# What a proposal may be made as (by its verdict).
INITIAL_STATUSES = frozenset({P.PROPOSED, P.REFUSED, P.WITHIN_TOLERANCE})
# A new proposal or a session change supersedes a proposal in these.
SUPERSEDABLE = frozenset({P.PROPOSED, P.CONFIRMED, P.AWAITING_APPROVAL})


class ProposalTransitionRefused(Exception):
    """A proposal status change that is not in PROPOSAL_TRANSITIONS (a bug, never a user error)."""


@dataclass
class ImagingRecord:
    uid: str
    modality: str
    acquired_at: float
    couch: Pose


@dataclass
class TreatmentSession:
    patient_id: str
    plan_uid: str
    frame_of_reference_uid: str
    iso: tuple[float, float, float]
    patient_position: str
    opened_by: str
    opened_at: float
    imaging: dict[str, ImagingRecord] = field(default_factory=dict)
    # "plan": read from the stored RT Plan (daemon/plan_source.py); "manual":
    # typed under an override, whose reason is kept and shown.
    source: str = "manual"
    override_reason: str | None = None
    beams: tuple[str, ...] = ()
    planning_ct_series_uid: str | None = None
    planning_ct_dir: str | None = None
    # Where registrations to the plan's CT look: (centre mm, half size mm) of a
    # cube about the room's target structure; None: about the isocentre.
    registration_region: tuple[str, tuple[float, float, float], float] | None = None
    # The patient's envelope for the collision model (docs/collision.md); None: the
    # room's configured default.
    patient_envelope: PatientEnvelope | None = None

    def registration_centre(self) -> tuple[tuple[float, float, float], float | None]:
        """Centre and half size (None: the registration's default) of the region a
        registration to the planning CT looks at."""
        if self.registration_region is None:
            return self.iso, None
        return self.registration_region[1], self.registration_region[2]

    def view(self) -> JsonObject:
        return {
            "patient_id": self.patient_id,
            "plan_uid": self.plan_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "iso": list(self.iso),
            "patient_position": self.patient_position,
            "opened_by": self.opened_by,
            "opened_at": self.opened_at,
            "imaging_sessions": [*sorted(self.imaging)],  # a list[JsonValue] for mypy
            "source": self.source,
            "override_reason": self.override_reason,
            "beams": [*self.beams],
            "planning_ct_series_uid": self.planning_ct_series_uid,
            "registration_region": None if self.registration_region is None else {
                "structure": self.registration_region[0],
                "centre_mm": list(self.registration_region[1]),
                "half_mm": self.registration_region[2]},
            "patient_envelope": None if self.patient_envelope is None else
            self.patient_envelope.model_dump(mode="json"),
        }


@dataclass
class Confirmation:
    id: str
    proposal_id: str
    user: str
    at: float
    at_mono: float
    expires_mono: float
    approver: str | None = None
    approved_at: float | None = None


@dataclass
class Proposal:
    id: str
    created_at: float
    created_mono: float
    user: str
    binding: Binding
    iso: tuple[float, float, float]
    patient_position: str
    matrix: list[list[float]]
    couch_at_imaging: Pose
    plan: CorrectionPlan
    source: str
    status: ProposalStatus = ProposalStatus.PROPOSED
    confirmation: Confirmation | None = None
    history: list[JsonObject] = field(default_factory=list)
    # The collision check of its path at the proposal (daemon/collision_guard.py).
    collision: CollisionView | None = None

    def __post_init__(self) -> None:
        if self.status not in INITIAL_STATUSES:
            raise ProposalTransitionRefused(f"a proposal cannot be made {self.status}")

    def can(self, new: ProposalStatus) -> bool:
        return new in PROPOSAL_TRANSITIONS[self.status]

    def to(self, new: ProposalStatus) -> None:
        """Change the status; a change not in the table is refused (nothing changes)."""
        if new not in PROPOSAL_TRANSITIONS[self.status]:
            raise ProposalTransitionRefused(f"proposal {self.id} cannot go from {self.status} "
                                            f"to {new}")
        self.status = new

    @property
    def verdict(self) -> Verdict:
        return self.plan.verdict

    @property
    def target(self) -> Pose:
        return self.plan.target

    def note(self, what: str, **details: JsonValue) -> None:
        self.history.append({"at": time.time(), "what": what, **details})

    def view(self) -> JsonObject:
        c = self.confirmation
        return {
            "id": self.id,
            "status": str(self.status),
            "created_at": self.created_at,
            "user": self.user,
            "binding": self.binding.model_dump(),
            "iso": list(self.iso),
            "patient_position": self.patient_position,
            "couch_at_imaging": dict(self.couch_at_imaging.as_dict()),  # JSON for mypy
            "source": self.source,
            # The registration it came from: a console shows the review images whose
            # matrix this is (docs/console-api.md, "Review images").
            "matrix": [list(row) for row in self.matrix],
            **self.plan.to_json_dict(),
            "confirmation": None if c is None else {
                "id": c.id, "user": c.user, "at": c.at, "approver": c.approver,
                "approved_at": c.approved_at,
            },
            "collision": None if self.collision is None else self.collision.view(),
        }

    def record(self) -> JsonObject:
        """What the persistent store keeps (enough to explain it after a restart)."""
        return self.view()  # the matrix included
