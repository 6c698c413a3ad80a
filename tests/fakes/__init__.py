"""In-memory fakes of the room's ports (daemon/ports.py).

They let the workflow and supervision rules of RoomService run in
milliseconds, on the test's event loop, without a process, a pty or a Modbus
server. They model what the rules look at, not the devices: the process-level
tests (tests/room, tests/campaign) remain the proof on real wires.

Every device command and every audit record goes into one `Journal`, so a
test can check the order of what happened (STOP before the audit record).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config import RoomConfig
from daemon.jsontypes import JsonMapping, JsonObject
from daemon.service import RoomService
from drivers.couch import CouchEvent, CouchStatus, TargetEcho
from drivers.plc import PlcSnapshot
from safety.pose import Pose


@dataclass
class Journal:
    """What reached the devices and the audit log, in order."""

    # detail: a Pose, an echo id, a (axis, velocity, ms) tuple, audit details...
    entries: list[tuple[str, object]] = field(default_factory=list)

    def add(self, what: str, detail: object = None) -> None:
        self.entries.append((what, detail))

    def index(self, what: str, match: Callable[[object], bool] = lambda _: True) -> int:
        for i, (w, d) in enumerate(self.entries):
            if w == what and match(d):
                return i
        raise AssertionError(f"{what} not in the journal: {[w for w, _ in self.entries]}")

    def count(self, what: str) -> int:
        return sum(w == what for w, _ in self.entries)


class FakeCouch:
    """A couch controller that does what it is told at once.

    `status()` answers without telling the listeners (the real link does), so
    that a test decides which reports the room sees; `push()` tells them."""

    def __init__(self, journal: Journal, pose: Pose | None = None) -> None:
        self.journal = journal
        self.pose = pose or Pose()
        self.state = "IDLE"
        self.fault_code = "none"
        self.link_ok = True
        self.latest_status: CouchStatus | None = None
        self._listeners: list[Callable[[CouchEvent], None]] = []
        self._echo = 0
        self._t0 = time.monotonic()
        self._uptime_ms = 0
        # Runs while GO is on its way (before the controller acts on it).
        self.while_go_in_flight: Callable[[], Awaitable[None]] | None = None
        self._make_status()

    def _make_status(self) -> CouchStatus:
        moving = (self.state == "MOVING",) * 6
        now = time.monotonic()
        # Each report is newer than the last (the room orders reports by uptime).
        self._uptime_ms = max(self._uptime_ms + 1, int((now - self._t0) * 1000))
        self.latest_status = CouchStatus(self.state, self.pose, moving, (False,) * 6, self.fault_code,
                                         self._echo, 0, 0, 0, 250, self._uptime_ms, now)
        return self.latest_status

    async def status(self, retries: int | None = None) -> CouchStatus:
        return self._make_status()

    def push(self) -> None:
        """The controller pushes a status to every listener."""
        status = self._make_status()
        for cb in list(self._listeners):
            cb(status)

    def arrive(self, pose: Pose) -> None:
        """The move ends at `pose` (the next status reports it at rest)."""
        self.pose, self.state = pose, "IDLE"

    async def send_target(self, pose: Pose, validity_ms: int) -> TargetEcho:
        return await self.start_target(pose, validity_ms)

    def start_target(self, pose: Pose, validity_ms: int) -> asyncio.Future[TargetEcho]:
        self._echo += 1
        self.journal.add("TARGET", pose)
        done: asyncio.Future[TargetEcho] = asyncio.get_running_loop().create_future()
        # The echo carries the couch as it arms: where it is, which axes move.
        done.set_result(TargetEcho(self._echo, pose, validity_ms, time.monotonic(), self.pose,
                                   (self.state == "MOVING",) * 6))
        return done

    async def go(self, echo_id: int) -> None:
        self.journal.add("GO", echo_id)
        if self.while_go_in_flight is not None:
            await self.while_go_in_flight()
        self.state = "MOVING"

    async def jog(self, axis: str, velocity: float, duration_ms: int) -> None:
        self.journal.add("JOG", (axis, velocity, duration_ms))

    async def stop(self) -> None:
        self.journal.add("STOP_ACKED")

    def stop_nowait(self) -> bool:
        self.journal.add("STOP")
        if self.state == "MOVING":
            self.state = "IDLE"
        return True

    async def reset(self) -> None:
        self.journal.add("RESET")
        if self.state == "FAULT":
            self.state, self.fault_code = "IDLE", "none"

    def add_listener(self, callback: Callable[[CouchEvent], None]) -> Callable[[], None]:
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)


class FakePlc:
    """The room PLC as judged: open interlocks, the motion-enable pendant, the arms."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.open: list[str] = []
        self.enable_pressed = True
        self.arms_parked = True
        self.arms_moving = False
        self.link_ok = True
        self.beam_hold: bool | None = False
        self.gantry_deg: float | None = 0.0  # IEC 61217; None: not vouched for
        self._listeners: list[Callable[[PlcSnapshot], None]] = []

    def add_listener(self, cb: Callable[[PlcSnapshot], None]) -> None:
        self._listeners.append(cb)

    def snapshot(self) -> PlcSnapshot:
        now = time.monotonic()
        return PlcSnapshot(inputs={}, arms_moving={}, arm_position_pct={},
                           outputs={"beam_hold": self.beam_hold}, fault_code=0, heartbeat=1,
                           heartbeat_age_s=0.0, link_ok=self.link_ok,
                           link_reason="ok" if self.link_ok else "link down",
                           read_at=now, taken_at=now, gantry_deg=self.gantry_deg)

    def open_interlocks(self, snap: PlcSnapshot) -> list[str]:
        return list(self.open)

    def motion_enable_pressed(self, snap: PlcSnapshot) -> bool:
        return self.enable_pressed

    def arms_state(self, snap: PlcSnapshot) -> tuple[bool, bool]:
        return self.arms_parked, self.arms_moving

    def on_room_state(self, state: str) -> None:
        pass

    async def fresh_snapshot(self) -> PlcSnapshot:
        return self.snapshot()

    async def set_beam_hold(self, hold: bool) -> None:
        self.journal.add("BEAM_HOLD", hold)
        self.beam_hold = hold

    def describe(self) -> JsonObject:
        return {"monitored": True, "inputs": [], "open": list(self.open)}

    def change(self, *, open_: list[str] | None = None, enable: bool | None = None) -> None:
        """An input changes: the PLC driver tells its listeners synchronously."""
        if open_ is not None:
            self.open = open_
        if enable is not None:
            self.enable_pressed = enable
        snap = self.snapshot()
        for cb in list(self._listeners):
            cb(snap)


class FakeArms:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def extend(self) -> None:
        self.journal.add("ARMS_EXTEND")

    async def retract(self) -> None:
        self.journal.add("ARMS_RETRACT")


class FakeStore:
    """The apply-once store's rules, in memory (daemon/store.py keeps them in SQLite)."""

    _TERMINAL = frozenset({"completed", "failed", "interrupted"})

    def __init__(self) -> None:
        self.proposals: dict[str, JsonMapping] = {}
        self.confirmations: dict[str, JsonObject] = {}
        self.moves: dict[str, JsonObject] = {}

    def save_proposal(self, proposal_id: str, record: JsonMapping) -> None:
        self.proposals[proposal_id] = record

    def record_confirmation(self, confirmation_id: str, proposal_id: str, user: str, at: float,
                            approver: str | None = None) -> bool:
        self.confirmations[confirmation_id] = {"proposal_id": proposal_id, "user": user,
                                               "at": at, "approver": approver}
        return True

    def claim_move(self, confirmation_id: str, proposal_id: str,
                   target: JsonMapping) -> bool:
        if confirmation_id in self.moves or self.proposal_completed(proposal_id):
            return False
        if any(m["proposal_id"] == proposal_id and m["state"] not in self._TERMINAL
               for m in self.moves.values()):
            return False
        self.moves[confirmation_id] = {"confirmation_id": confirmation_id,
                                       "proposal_id": proposal_id, "state": "sending"}
        return True

    def finish_move(self, confirmation_id: str, state: str,
                    detail: JsonMapping | None = None) -> bool:
        move = self.moves.get(confirmation_id)
        if move is None or move["state"] in self._TERMINAL:
            return False
        move["state"] = state
        return True

    def mark_interrupted(self, confirmation_id: str,
                         detail: JsonMapping | None = None) -> bool:
        return self.finish_move(confirmation_id, "interrupted", detail)

    def proposal_completed(self, proposal_id: str) -> bool:
        return any(m["proposal_id"] == proposal_id and m["state"] == "completed"
                   for m in self.moves.values())

    def move_for_confirmation(self, confirmation_id: str) -> JsonObject | None:
        return self.moves.get(confirmation_id)

    def unfinished_moves(self) -> list[JsonObject]:
        return [m for m in self.moves.values() if m["state"] not in self._TERMINAL]


class FakeAudit:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.records: list[tuple[str, str, dict[str, object]]] = []

    def append(self, event: str, actor: str, **details: object) -> object:
        self.records.append((event, actor, details))
        self.journal.add(f"audit:{event}", details)
        return None

    @property
    def head(self) -> tuple[int, str]:
        return len(self.records), ""

    def events(self, event: str) -> list[dict[str, object]]:
        return [d for e, _, d in self.records if e == event]


@dataclass
class FakeRoom:
    service: RoomService
    couch: FakeCouch
    plc: FakePlc
    store: FakeStore
    audit: FakeAudit
    journal: Journal


def room_config(tmp_path: Path, *, qa: dict[str, object] | None = None,
                **motion: object) -> RoomConfig:
    """The fake room's configuration; `qa`: its daily-QA section (default: the gate off,
    as in a simulated room; tests/rules/test_qa_rules.py turns it on)."""
    return RoomConfig.model_validate({
        "room": "fakeroom",
        "state_dir": str(tmp_path),
        "couch": {"port": "/dev/null"},
        "motion": motion,
        "qa": {"gate": False} if qa is None else qa,
        "users": [{"name": "alice", "role": "therapist"}, {"name": "bob", "role": "approver"},
                  {"name": "carol", "role": "approver"}, {"name": "sam", "role": "service"}],
    })


async def fake_room(tmp_path: Path, *, store: FakeStore | None = None,
                    barrier: Callable[[], Awaitable[None]] | None = None,
                    go_barrier: Callable[[], Awaitable[None]] | None = None,
                    hold_syncs: Callable[[], Callable[[], None]] | None = None,
                    qa: dict[str, object] | None = None,
                    **motion: object) -> FakeRoom:
    """A started RoomService on fakes (supervision loops not running: see `supervised`).
    `barrier`, `go_barrier`, `hold_syncs`: igrtd's group commit, everything and the
    audit log alone, its background flushes held (None: every record durable as
    written); `qa`: the
    configuration's qa section (default: gate off)."""
    journal = Journal()
    couch, plc, audit = FakeCouch(journal), FakePlc(journal), FakeAudit(journal)
    store = store or FakeStore()
    service = RoomService(room_config(tmp_path, qa=qa, **motion), couch, audit, store, plc=plc,
                          arms=FakeArms(journal), barrier=barrier, go_barrier=go_barrier,
                          hold_syncs=hold_syncs)
    await service.start()
    return FakeRoom(service, couch, plc, store, audit, journal)
