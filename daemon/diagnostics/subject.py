"""What diagnostics reads from the room it describes, typed.

`collect` and the bundle are handed a RoomService, or in tests a stand-in with
only some of its attributes; what a stand-in lacks is reported absent rather
than failing the self-test. `Subject.of` is the one place that tolerates the
missing parts: each part is matched against a one-member Protocol (so mypy
knows its type afterwards), and everything past this module works on the
typed `Subject`.

Settings that belong to one driver and not to its port Protocol (the serial
link's timings, a PLC poll interval, where the audit log and the store live)
are matched the same way, so they are reported when the adapter has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from daemon.config import RoomConfig
from daemon.jsontypes import JsonMapping
from daemon.ports import AuditPort, CouchPort, RoomSafetyPort
from safety.pose import Pose

# ------------------------------------------------------------- the room's parts


@runtime_checkable
class _HasConfig(Protocol):
    @property
    def config(self) -> RoomConfig: ...


@runtime_checkable
class _HasCouch(Protocol):
    @property
    def couch(self) -> CouchPort: ...


@runtime_checkable
class _HasPlc(Protocol):
    @property
    def plc(self) -> RoomSafetyPort | None: ...


@runtime_checkable
class _HasAuditLog(Protocol):
    @property
    def audit_log(self) -> AuditPort: ...


@runtime_checkable
class _HasStore(Protocol):
    @property
    def store(self) -> object: ...


class WorkflowView(Protocol):
    """The room's workflow state (daemon.workflow.Workflow)."""

    @property
    def state(self) -> object: ...

    @property
    def reason(self) -> str: ...


@runtime_checkable
class _HasWorkflow(Protocol):
    @property
    def workflow(self) -> WorkflowView: ...


@runtime_checkable
class _HasSession(Protocol):
    @property
    def session(self) -> object | None: ...


class StartedMoveView(Protocol):
    """A move that was sent (daemon.motion_gate.StartedMove)."""

    @property
    def confirmation_id(self) -> str: ...

    @property
    def target(self) -> Pose: ...

    @property
    def started_mono(self) -> float: ...


class ActiveMoveView(Protocol):
    """The move under way (daemon.room.ActiveMove)."""

    @property
    def started(self) -> StartedMoveView: ...


@runtime_checkable
class _HasActive(Protocol):
    @property
    def active(self) -> ActiveMoveView | None: ...


@runtime_checkable
class _HasLastResult(Protocol):
    @property
    def last_result(self) -> JsonMapping | None: ...


# ------------------------------------------------ adapter settings off the ports


@runtime_checkable
class SerialLinkSettings(Protocol):
    """The serial couch driver's own settings (drivers.couch.CouchClient)."""

    @property
    def port(self) -> str: ...

    @property
    def heartbeat_interval_s(self) -> float: ...

    @property
    def reply_timeout_s(self) -> float: ...

    @property
    def link_timeout_s(self) -> float | None: ...

    @property
    def last_rx(self) -> float:
        """time.monotonic() of the last frame received (0.0: none yet)."""
        ...


@runtime_checkable
class PolledLink(Protocol):
    """A PLC adapter that tells its Modbus polling period."""

    @property
    def poll_interval_s(self) -> object: ...


@runtime_checkable
class _HasDirectory(Protocol):
    @property
    def directory(self) -> Path: ...


@runtime_checkable
class _HasPath(Protocol):
    @property
    def path(self) -> Path: ...


# ------------------------------------------------------------------ the subject


@dataclass(frozen=True)
class Subject:
    """The parts of the room diagnostics reads; None where the room has none."""

    config: RoomConfig | None = None
    couch: CouchPort | None = None
    plc: RoomSafetyPort | None = None
    audit_log: AuditPort | None = None
    store: object | None = None
    workflow: WorkflowView | None = None
    session_open: bool = False
    active: ActiveMoveView | None = None
    last_result: JsonMapping | None = None

    @classmethod
    def of(cls, service: object) -> Subject:
        """The typed parts of a RoomService or of a stand-in with some of them."""
        return cls(
            config=service.config if isinstance(service, _HasConfig) else None,
            couch=service.couch if isinstance(service, _HasCouch) else None,
            plc=service.plc if isinstance(service, _HasPlc) else None,
            audit_log=service.audit_log if isinstance(service, _HasAuditLog) else None,
            store=service.store if isinstance(service, _HasStore) else None,
            workflow=service.workflow if isinstance(service, _HasWorkflow) else None,
            session_open=isinstance(service, _HasSession) and service.session is not None,
            active=service.active if isinstance(service, _HasActive) else None,
            last_result=service.last_result if isinstance(service, _HasLastResult) else None,
        )

    @property
    def room(self) -> str | None:
        return self.config.room if self.config is not None else None

    @property
    def state_dir(self) -> Path | None:
        return Path(self.config.state_dir) if self.config is not None else None

    @property
    def audit_dir(self) -> Path | None:
        """Where the audit log is: the log's own directory, else state_dir/audit."""
        if isinstance(self.audit_log, _HasDirectory) and self.audit_log.directory:
            return Path(self.audit_log.directory)
        state_dir = self.state_dir
        return state_dir / "audit" if state_dir else None

    @property
    def audit_head(self) -> tuple[int, str] | None:
        head = self.audit_log.head if self.audit_log is not None else None
        return (head[0], head[1]) if head else None

    @property
    def store_path(self) -> Path | None:
        """The apply-once store's SQLite file: the store's own path, else state_dir's."""
        if isinstance(self.store, _HasPath) and self.store.path:
            return Path(self.store.path)
        state_dir = self.state_dir
        return state_dir / "igrt.sqlite" if state_dir else None
