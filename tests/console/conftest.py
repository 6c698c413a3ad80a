"""Fixtures for the MQTT console API: a real Mosquitto, users with keys, a
fake RoomCommands that records what reached it, and a running MqttConsole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OKPKey
from support.mosquitto import Mosquitto, running_mosquitto

from daemon.api import Actor, CommandError, ImagingRequest, ProposeRequest, SessionRequest
from daemon.console.client import ConsoleClient
from daemon.console.keys import generate_keypair, load_private_key
from daemon.console.server import MqttConsole
from daemon.console.tokens import CommandVerifier, MemoryReplayCache, ReplayCache
from daemon.console.users import UserRegistry, add_user

ROOM = "room1"
USERS = {"alice": "therapist", "bob": "approver", "vera": "viewer", "sam": "service"}
MOTION_METHODS = frozenset({"propose", "confirm", "approve", "hold", "reset"})


@dataclass
class FakeRoom:
    """Implements daemon.api.RoomCommands; records every call that reached it."""

    calls: list[tuple[str, Actor, Any]] = field(default_factory=list)
    confirmed_by: dict[str, str] = field(default_factory=dict)
    holds_until_done: int = 1_000_000
    slow_gate: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "IDLE"

    def _record(self, name: str, actor: Actor, arg: Any = None) -> None:
        self.calls.append((name, actor, arg))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def motion_calls(self) -> list[str]:
        return [n for n in self.names() if n in MOTION_METHODS]

    async def status(self, actor: Actor) -> dict[str, Any]:
        self._record("status", actor)
        return {"state": self.state, "actor": actor.user, "role": actor.role.value, "via": actor.via}

    async def interlocks(self, actor: Actor) -> dict[str, Any]:
        self._record("interlocks", actor)
        return {"all_closed": True}

    async def propose(self, actor: Actor, req: ProposeRequest) -> dict[str, Any]:
        self._record("propose", actor, req)
        return {"proposal_id": "p1", "verdict": "confirm"}

    async def confirm(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self._record("confirm", actor, proposal_id)
        if proposal_id == "slow":
            await self.slow_gate.wait()
        self.confirmed_by[proposal_id] = actor.user
        return {"proposal_id": proposal_id, "status": "awaiting_approval"}

    async def approve(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self._record("approve", actor, proposal_id)
        # The real rule lives in RoomService; the fake mirrors its interface.
        if self.confirmed_by.get(proposal_id) == actor.user:
            raise CommandError(
                f"second approval must come from a different user than {actor.user}", "refused"
            )
        return {"proposal_id": proposal_id, "status": "approved"}

    async def hold(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self._record("hold", actor, proposal_id)
        n = sum(1 for c in self.calls if c[0] == "hold")
        if n >= self.holds_until_done:
            return {"state": "DONE", "remaining": {}, "result": {"outcome": "arrived"}}
        return {"state": "MOVING", "remaining": {"lat": 1.0}}

    async def release(self, actor: Actor) -> dict[str, Any]:
        self._record("release", actor)
        return {"released": True}

    async def stop(self, actor: Actor, reason: str) -> dict[str, Any]:
        self._record("stop", actor, reason)
        self.state = "STOPPED"
        return {"stopped": True}

    async def reset(self, actor: Actor) -> dict[str, Any]:
        self._record("reset", actor)
        return {"state": "IDLE"}

    async def open_session(self, actor: Actor, req: SessionRequest) -> dict[str, Any]:
        self._record("open_session", actor, req)
        return {"session": req.patient_id}

    async def close_session(self, actor: Actor) -> dict[str, Any]:
        self._record("close_session", actor)
        return {}

    async def record_imaging(self, actor: Actor, req: ImagingRequest) -> dict[str, Any]:
        self._record("record_imaging", actor, req)
        return {}


@dataclass
class Identities:
    registry_path: Path
    key_paths: dict[str, Path]

    def key(self, user: str) -> OKPKey:
        return load_private_key(self.key_paths[user])

    def registry(self) -> UserRegistry:
        return UserRegistry.load(self.registry_path)


@pytest.fixture
def identities(tmp_path: Path) -> Identities:
    keys = {}
    reg = tmp_path / "users.json"
    for user, role in USERS.items():
        priv, pub = tmp_path / f"{user}.key", tmp_path / f"{user}.pub.jwk"
        public = generate_keypair(priv, pub)
        add_user(reg, user, role, public)
        keys[user] = priv
    return Identities(reg, keys)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path) as b:
        yield b


@dataclass
class AuditLog:
    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, event: str, actor: str, details: dict[str, Any]) -> None:
        self.records.append((event, actor, details))

    def rejections(self) -> list[dict[str, Any]]:
        return [d for e, _a, d in self.records if e == "console.command_rejected"]

    async def wait_rejection(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.rejections():
                await asyncio.sleep(0.01)
        return self.rejections()[-1]


@dataclass
class ConsoleHarness:
    console: MqttConsole
    room: FakeRoom
    audit: AuditLog
    links: list[bool]
    task: asyncio.Task[None]


@pytest.fixture
def fake_room() -> FakeRoom:
    return FakeRoom()


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog()


@contextlib.asynccontextmanager
async def serving(
    broker: Mosquitto,
    identities: Identities,
    room: FakeRoom,
    audit: AuditLog,
    replay_cache: ReplayCache | None = None,
    state: dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    **kw: Any,
) -> AsyncIterator[ConsoleHarness]:
    verifier_kw = {"clock": clock} if clock else {}
    verifier = CommandVerifier(
        identities.registry(), ROOM, replay_cache or MemoryReplayCache(), **verifier_kw
    )
    links: list[bool] = []
    console = MqttConsole(
        room, verifier,
        broker_host=broker.host, broker_port=broker.port, room=ROOM,
        username="igrtd", password=broker.creds["igrtd"],
        audit=audit, state_provider=(lambda: state) if state is not None else None,
        on_link_change=links.append, reconnect_min_s=0.05, reconnect_max_s=0.2, **kw,
    )
    task = asyncio.create_task(console.run())
    try:
        await console.wait_connected(timeout=5)
        yield ConsoleHarness(console, room, audit, links, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def served(
    broker: Mosquitto, identities: Identities, fake_room: FakeRoom, audit: AuditLog
) -> AsyncIterator[ConsoleHarness]:
    async with serving(broker, identities, fake_room, audit) as h:
        yield h


def console_client(
    broker: Mosquitto, identities: Identities, user: str = "alice", console: str = "console1",
    **kw: Any,
) -> ConsoleClient:
    return ConsoleClient(
        f"mqtt://{console}:{broker.creds[console]}@{broker.host}:{broker.port}",
        ROOM, user, identities.key_paths[user], console, **kw,
    )
