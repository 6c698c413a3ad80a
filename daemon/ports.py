"""The seams between the room's workflow and the things it drives or records.

RoomService and its parts (correction workflow, motion supervision, beam-on
monitoring, service mode, imager arms) are written against these Protocols,
not against the drivers: production passes the real adapters
(drivers.couch.CouchClient, daemon.plc_link.RoomInterlocks,
drivers.imager_arms.ImagerArms, daemon.imager_link.ImagerLink,
daemon.store.CorrectionStore, daemon.audit.AuditLog), and the rule tests pass
in-memory fakes (tests/fakes/) so workflow and supervision rules run in
milliseconds without a process or a wire.

Only what the room uses is declared. Motion methods of the couch and the arms
are here too, but only daemon/motion_gate.py calls them (a test scans for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from daemon.api import Actor, ProposeRequest
from daemon.imager_link import ImagerListener
from daemon.jsontypes import JsonMapping, JsonObject
from drivers.couch import CouchEvent, CouchStatus, TargetEcho
from drivers.plc import PlcSnapshot
from safety.pose import Pose


class CouchPort(Protocol):
    """The couch controller link (drivers.couch.CouchClient)."""

    @property
    def latest_status(self) -> CouchStatus | None:
        """The last status the controller sent (pushed or asked for)."""
        ...

    @property
    def link_ok(self) -> bool: ...

    async def status(self, retries: int | None = None) -> CouchStatus:
        """Ask for a status; `retries` None: the link's default (diagnostics asks 0)."""
        ...

    async def send_target(self, pose: Pose, validity_ms: int) -> TargetEcho: ...

    def start_target(self, pose: Pose, validity_ms: int) -> asyncio.Future[TargetEcho]:
        """TARGET written in this event-loop step; the future gives its echo."""
        ...

    async def go(self, echo_id: int) -> None: ...
    async def jog(self, axis: str, velocity: float, duration_ms: int) -> None: ...
    async def stop(self) -> None: ...

    def stop_nowait(self) -> bool:
        """Write STOP now, in this event-loop step; never raises for a lost link."""
        ...

    async def reset(self) -> None: ...
    def add_listener(self, callback: Callable[[CouchEvent], None]) -> Callable[[], None]: ...


class RoomSafetyPort(Protocol):
    """The room PLC as judged by the one interlock rule (daemon.plc_link.RoomInterlocks)."""

    def add_listener(self, cb: Callable[[PlcSnapshot], None]) -> None: ...
    def snapshot(self) -> PlcSnapshot: ...
    def open_interlocks(self, snap: PlcSnapshot) -> list[str]: ...
    def motion_enable_pressed(self, snap: PlcSnapshot) -> bool: ...

    def arms_state(self, snap: PlcSnapshot) -> tuple[bool, bool]:
        """(both imager arms parked, any arm moving or not vouched for)."""
        ...

    def on_room_state(self, state: str) -> None: ...

    async def fresh_snapshot(self) -> PlcSnapshot:
        """A snapshot from a read sent after this call (the PLC may be polled seldom
        in STANDBY); an exception if none comes within the staleness limit."""
        ...

    async def set_beam_hold(self, hold: bool) -> None: ...
    def describe(self) -> JsonObject: ...


class ImagerArmsPort(Protocol):
    """The kV source and detector arms (drivers.imager_arms.ImagerArms)."""

    async def extend(self) -> None: ...
    async def retract(self) -> None: ...


class ImagerLinkPort(Protocol):
    """The kV imaging system's frame stream (daemon.imager_link.ImagerLink)."""

    @property
    def connected(self) -> bool: ...

    def set_listener(self, listener: ImagerListener) -> None: ...
    async def request_acquisition(self, rate_hz: float) -> bool: ...
    async def stop_acquisition(self) -> bool: ...
    def describe(self) -> JsonObject: ...


class CorrectionStorePort(Protocol):
    """The durable apply-once store (daemon.store.CorrectionStore)."""

    def save_proposal(self, proposal_id: str, record: JsonMapping) -> None: ...
    def record_confirmation(self, confirmation_id: str, proposal_id: str, user: str, at: float,
                            approver: str | None = None) -> bool: ...

    def claim_move(self, confirmation_id: str, proposal_id: str,
                   target: JsonMapping) -> bool:
        """Durably claim the move before anything is sent; False if already claimed."""
        ...

    def finish_move(self, confirmation_id: str, state: str,
                    detail: JsonMapping | None = None) -> bool: ...
    def mark_interrupted(self, confirmation_id: str,
                         detail: JsonMapping | None = None) -> bool: ...
    def proposal_completed(self, proposal_id: str) -> bool: ...
    def move_for_confirmation(self, confirmation_id: str) -> JsonObject | None: ...
    def unfinished_moves(self) -> list[JsonObject]: ...


class AuditPort(Protocol):
    """The hash-chained audit log (daemon.audit.AuditLog)."""

    def append(self, event: str, actor: str, **details: object) -> object:
        """Write one record durably before returning."""
        ...

    @property
    def head(self) -> tuple[int, str]: ...


class Proposer(Protocol):
    """Makes proposals (daemon/correction_workflow.py); between-beam corrections
    (daemon/between_beams.py) go through it like every other."""

    async def propose(self, actor: Actor, req: ProposeRequest, *,
                      between_beams: bool = False) -> JsonObject: ...
