"""Proposals and confirmations as the daemon holds them in memory.

A proposal is one registration turned into a planned couch target, bound to
patient, plan, frame of reference, imaging session and the couch pose at
imaging. A confirmation is one person's go-ahead for one proposal; each has
its own id, and a confirmation id is executed at most once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.api import Binding
from safety.correction import CorrectionPlan
from safety.policy import Verdict
from safety.pose import Pose


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


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
    status: str = "proposed"  # proposed|confirmed|awaiting_approval|moving|completed|interrupted|
    #                           refused|within_tolerance|superseded|expired|failed
    confirmation: Confirmation | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        return self.plan.verdict

    @property
    def target(self) -> Pose:
        return self.plan.target

    def note(self, what: str, **details: Any) -> None:
        self.history.append({"at": time.time(), "what": what, **details})

    def view(self) -> dict[str, Any]:
        c = self.confirmation
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "user": self.user,
            "binding": self.binding.model_dump(),
            "iso": list(self.iso),
            "patient_position": self.patient_position,
            "couch_at_imaging": self.couch_at_imaging.as_dict(),
            "source": self.source,
            **self.plan.to_json_dict(),
            "confirmation": None if c is None else {
                "id": c.id, "user": c.user, "at": c.at, "approver": c.approver,
                "approved_at": c.approved_at,
            },
        }

    def record(self) -> dict[str, Any]:
        """What the persistent store keeps (enough to explain it after a restart)."""
        return {**self.view(), "matrix": self.matrix}
