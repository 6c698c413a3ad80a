"""What every part of igrtd's QA (daemon/qa_workflow.py) shares: the open QA run, its
baselines and measurements, the store, the gate's view of it, and the refusals every
QA command starts with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from daemon.api import (
    Actor,
)
from daemon.config_sections import QA_PROFILE_RANK, QaConfig
from daemon.jsontypes import JsonObject, JsonValue, as_float, as_object
from daemon.proposals import TreatmentSession
from daemon.qa_store import QaStore
from daemon.registration_worker import QaBb, QaShift
from daemon.room import Room, pose_json
from daemon.workflow import RoomState
from safety.pose import AXES, Pose
from safety.qa_calibration import Calibration

S = RoomState
Vec3 = tuple[float, float, float]
Six = tuple[float, float, float, float, float, float]

BASELINE = "baseline"


class QaImaging(Protocol):
    """Where QA images are analysed (the registration worker; a fake in rule tests)."""

    async def qa_bb(self, image: str, expected_mm: Vec3, search_radius_mm: float) -> QaBb: ...
    async def qa_shift(self, baseline: str, image: str, bb_mm: Vec3, bb_room_mm: Vec3,
                       home: Six, pivot_mm: Vec3,
                       holes: tuple[tuple[Vec3, float], ...] = ()) -> QaShift: ...


def vec_json(values: list[float] | tuple[float, ...]) -> list[JsonValue]:
    return [float(v) for v in values]


@dataclass
class QaBaseline:
    image: str
    bb_dicom_mm: Vec3
    iso_offset_mm: Vec3
    load_kg: float
    index: int  # in QaRun.measurements


@dataclass
class QaRun:
    """One open QA session."""

    id: str
    kind: str
    profile: str
    home: Pose
    started_at: float
    started_by: str
    load_kg: float
    session: TreatmentSession
    calibration_version: int | None
    baselines: list[QaBaseline] = field(default_factory=list)
    measurements: list[JsonObject] = field(default_factory=list)
    last_move: str | None = None  # proposal id of the latest QA move
    # The calibration active at qa_start: the daily result judges the room under it.
    calibration: Calibration | None = None

    def view(self) -> JsonObject:
        return {"id": self.id, "kind": self.kind, "profile": self.profile,
                "home": pose_json(self.home), "started_at": self.started_at,
                "started_by": self.started_by, "load_kg": self.load_kg,
                "calibration_version": self.calibration_version,
                "images": [m["label"] for m in self.measurements],
                "last_move": self.last_move}


@dataclass(frozen=True)
class QaOverride:
    session: TreatmentSession
    by: str
    at: float
    reason: str

    def view(self) -> JsonObject:
        return {"by": self.by, "at": self.at, "reason": self.reason,
                "patient_id": self.session.patient_id}


class QaBase:
    """The state of the room's QA and the helpers its commands share."""

    def __init__(self, room: Room, imaging: QaImaging, *,
                 store_path: Path | None = None) -> None:
        self.room = room
        self.imaging = imaging
        self.store_path = store_path or room.config.state_dir / "qa.sqlite"
        self.store: QaStore | None = None
        self.store_problem: str | None = "QA store not opened yet"
        self.run: QaRun | None = None
        self.override: QaOverride | None = None
        self._last_daily: JsonObject | None = None
        self._last_pass: JsonObject | None = None
        self._calibration: JsonObject | None = None  # the active one, as stored

    @property
    def cfg(self) -> QaConfig:
        return self.room.config.qa


    async def _refresh(self) -> None:
        """The gate's and planning's view of the store (kept in memory: the status snapshot
        and every propose read it)."""
        store = self.store
        if store is None:
            return
        allowed = tuple(p for p, r in QA_PROFILE_RANK.items()
                        if r >= QA_PROFILE_RANK[self.cfg.profile])
        self._last_daily = await asyncio.to_thread(store.last_result, "daily")
        self._last_pass = await asyncio.to_thread(store.last_result, "daily", passed=True,
                                                  profiles=allowed)
        active = await asyncio.to_thread(store.active_calibration)
        self._calibration = active
        self.room.calibration = (None if active is None else Calibration.from_json(
            as_object(active["calibration"], "calibration")))

    def _current_run(self) -> QaRun | None:
        run = self.run
        if run is not None and self.room.session is not run.session:
            # The session closed (close_session, service mode): the run is over, unstored.
            self.run = None
            return None
        return run

    def _store(self, actor: Actor, cmd: str) -> QaStore:
        if self.store is None:
            raise self.room.refuse(actor, cmd, f"QA store unavailable: {self.store_problem}")
        return self.store

    def _need_run(self, actor: Actor, cmd: str) -> QaRun:
        run = self._current_run()
        if run is None:
            raise self.room.refuse(actor, cmd, "no QA session is open (qa_start)")
        return run

    async def _couch_pose(self, actor: Actor, cmd: str) -> Pose:
        try:
            return (await self.room.couch.status()).pose
        except Exception as exc:  # noqa: BLE001 - no pose, no QA step
            raise self.room.refuse(actor, cmd, f"couch pose could not be read: {exc}") from None


def floats_of(value: JsonValue) -> dict[str, float]:
    d = as_object(value, "pose")
    return {a: as_float(d[a], a) for a in AXES}
