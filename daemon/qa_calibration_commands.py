"""Calibration commands of igrtd's QA (H-CALIBRATION, docs/qa.md): proposed from stored
results by a physicist, active only after a second physicist approves, versioned,
audited and revertible; refused while a correction is pending or moving."""

from __future__ import annotations

import asyncio

from daemon.api import (
    Actor,
    QaCalibrationApproveRequest,
    QaCalibrationProposeRequest,
    QaCalibrationRevertRequest,
    QaCalibrationsRequest,
    Reply,
)
from daemon.jsontypes import JsonObject, as_object
from daemon.qa_base import QaBase
from daemon.qa_store import QaStore, QaStoreError
from daemon.workflow import RoomState
from safety.qa import DailyQaResult
from safety.qa_calibration_proposal import propose_calibration
from safety.qa_sag import SagModel

S = RoomState
# States in which a calibration may change: no correction pending, nothing moving.
_CALIBRATION_STATES = frozenset({S.OFFLINE, S.STANDBY, S.READY, S.DONE, S.SERVICE,
                                 S.STOPPED, S.FAULT})


class QaCalibrationCommands(QaBase):
    def _calibration_may_change(self, actor: Actor, cmd: str) -> None:
        state = self.room.workflow.state
        if state not in _CALIBRATION_STATES:
            raise self.room.refuse(actor, cmd, f"the calibration cannot change in state {state} "
                                   "(a correction is pending or moving)")

    async def qa_calibration_propose(self, actor: Actor,
                                     req: QaCalibrationProposeRequest) -> Reply:
        store = self._store(actor, "qa_calibration_propose")
        daily = await self._result_for(actor, store, req.result_id, "daily")
        sag_row = await self._result_for(actor, store, req.sag_result_id, "sag",
                                         required=req.sag_result_id is not None)
        sag_json = sag_row.get("sag")
        try:
            sag = SagModel.from_json(sag_json) if isinstance(sag_json, dict) else None
            previous = self.room.calibration
            cal = propose_calibration(DailyQaResult.from_json(daily), sag, previous=previous,
                                      version=1 if previous is None else previous.version + 1)
        except ValueError as exc:
            raise self.room.refuse(actor, "qa_calibration_propose", str(exc)) from None
        basis: JsonObject = {"result_id": daily["id"],
                             "sag_result_id": sag_row.get("id") if sag is not None else None,
                             "previous_version": None if previous is None else previous.version,
                             "reason": req.reason}
        try:
            row = await asyncio.to_thread(store.propose_calibration, actor.user,
                                          as_object(cal.to_json(), "calibration"), basis)
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_calibration_propose", str(exc)) from None
        self.room.audit("calibration", actor.user, action="propose", version=row["version"],
                        calibration=row["calibration"], basis=basis, via=actor.via)
        return row

    async def _result_for(self, actor: Actor, store: QaStore, result_id: int | None, kind: str,
                          *, required: bool = True) -> JsonObject:
        if result_id is not None:
            row = await asyncio.to_thread(store.result, result_id)
            if row is None or row.get("kind") != kind or row.get("aborted"):
                raise self.room.refuse(actor, "qa_calibration_propose",
                                       f"no {kind} QA result {result_id} in room "
                                       f"{self.room.config.room}")
            return row
        row = await asyncio.to_thread(store.last_result, kind,
                                      passed=True if kind == "sag" else None)
        if row is None and required:
            raise self.room.refuse(actor, "qa_calibration_propose",
                                   f"no {kind} QA result in room {self.room.config.room} to "
                                   "calibrate from")
        return row if row is not None else {}

    async def qa_calibration_approve(self, actor: Actor,
                                     req: QaCalibrationApproveRequest) -> Reply:
        store = self._store(actor, "qa_calibration_approve")
        self._calibration_may_change(actor, "qa_calibration_approve")
        try:
            row = await asyncio.to_thread(store.approve_calibration, req.version, actor.user)
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_calibration_approve", str(exc)) from None
        await self._refresh()
        self.room.audit("calibration", actor.user, action="approve", version=req.version,
                        proposed_by=row["proposed_by"], calibration=row["calibration"],
                        via=actor.via)
        self.room.publish_state()
        return row

    async def qa_calibration_revert(self, actor: Actor, req: QaCalibrationRevertRequest) -> Reply:
        store = self._store(actor, "qa_calibration_revert")
        self._calibration_may_change(actor, "qa_calibration_revert")
        was = None if self._calibration is None else self._calibration.get("version")
        try:
            active = await asyncio.to_thread(store.revert_calibration, req.version, actor.user,
                                             req.reason.strip())
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_calibration_revert", str(exc)) from None
        await self._refresh()
        self.room.audit("calibration", actor.user, action="revert", from_version=was,
                        to_version=req.version or None, reason=req.reason.strip(),
                        via=actor.via)
        self.room.publish_state()
        return {"active": None if active is None else active["version"], "was": was}

    async def qa_calibrations(self, actor: Actor, req: QaCalibrationsRequest) -> Reply:
        store = self._store(actor, "qa_calibrations")
        rows = await asyncio.to_thread(store.calibrations, req.limit)
        return {"active": None if self._calibration is None else self._calibration["version"],
                "calibrations": list(rows)}
