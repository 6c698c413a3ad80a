"""igrtd with its MQTT console API on a real Mosquitto: signed commands move the
couch; a broker restart during a move stops it and the daemon comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.mosquitto import running_mosquitto

from daemon.console.client import CommandRefused, ConsoleClient, ConsoleTimeout
from daemon.console.keys import generate_keypair
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room import DEMO_USERS, DaemonProcess, SimRoom
from sim.world import PatientWorld

from .conftest import FOR, ISO, PATIENT, PLAN, Console, executed


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    with running_mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for u in ("alice", "bob"):
        generate_keypair(tmp_path / f"{u}.key", tmp_path / f"{u}.pub.json")
        out[u] = tmp_path / f"{u}.key"
    return out


@pytest.fixture
def mqtt_daemon(room: SimRoom, broker: Any, keys: dict[str, Path],
                tmp_path: Path) -> Iterator[DaemonProcess]:
    import json

    users = []
    for u in DEMO_USERS:
        pub = tmp_path / f"{u['name']}.pub.json"
        users.append({**u, "public_key": json.loads(pub.read_text())} if pub.exists() else u)
    pw = tmp_path / "igrtd.mqtt.pw"
    pw.write_text(broker.creds["igrtd"])
    cfg = room.room_config(tmp_path / "state", users=users,
                           mqtt={"host": broker.host, "port": broker.port, "username": "igrtd",
                                 "password_file": str(pw)})
    d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
    yield d
    d.stop()


def _client(broker: Any, user: str, key: Path) -> ConsoleClient:
    return ConsoleClient(f"mqtt://{broker.host}:{broker.port}", "demo", user, key,
                         console_id="console1", password=broker.creds["console1"])


def _proposal_args(error: Pose) -> dict[str, Any]:
    world = PatientWorld.with_setup_error(ISO, "HFS", tuple(CouchModel.default().pivot), error)
    return {"matrix": np.asarray(world.true_registration(Pose())).tolist(), "iso": list(ISO),
            "patient_position": "HFS",
            "binding": {"patient_id": PATIENT, "plan_uid": PLAN, "frame_of_reference_uid": FOR,
                        "imaging_session_uid": f"IMG-{time.monotonic_ns()}",
                        "acquired_at": time.time()}}


async def _wait_connected(c: ConsoleClient) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            await c.status()
            return
        except (CommandRefused, ConsoleTimeout, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_signed_console_commands_run_a_fraction(room, broker, keys, mqtt_daemon) -> None:
    Console(mqtt_daemon.socket_path, "alice").open_session()
    async with _client(broker, "alice", keys["alice"]) as alice, \
            _client(broker, "bob", keys["bob"]) as bob:
        await _wait_connected(alice)
        prop = await alice.propose(_proposal_args(Pose(6.0, 4.0, -3.0, 1.5, 1.0, -0.8)))
        await alice.confirm(prop["id"])
        with pytest.raises(CommandRefused):
            await alice.approve(prop["id"])  # a therapist cannot approve
        await bob.approve(prop["id"])
        last = await alice.hold(prop["id"])
    assert last.get("state") == "DONE", last
    assert len(executed(room, "GO")) == 1


async def test_a_console_holding_before_the_second_approval_moves_as_it_lands(
        room, broker, keys, mqtt_daemon) -> None:
    Console(mqtt_daemon.socket_path, "alice").open_session()
    async with _client(broker, "alice", keys["alice"]) as alice, \
            _client(broker, "bob", keys["bob"]) as bob:
        await _wait_connected(alice)
        prop = await alice.propose(_proposal_args(Pose(6.0, 4.0, -3.0, 1.5, 1.0, -0.8)))
        await alice.confirm(prop["id"])
        held = asyncio.create_task(alice.hold(
            prop["id"], until=lambda r: r.get("state") in ("DONE", "STOPPED", "FAULT")))
        await asyncio.sleep(0.3)  # heartbeats arriving while the approval is awaited
        assert executed(room, "TARGET") == []
        approved = await bob.approve(prop["id"])
        assert approved["move"] == "started", approved.get("move_refused")
        last = await asyncio.wait_for(held, 60)
    assert last.get("state") == "DONE", last
    assert len(executed(room, "GO")) == 1


async def test_broker_restart_during_a_move_stops_it(room, broker, keys, mqtt_daemon) -> None:
    local = Console(mqtt_daemon.socket_path, "alice")
    local.open_session()
    async with _client(broker, "alice", keys["alice"]) as alice, \
            _client(broker, "bob", keys["bob"]) as bob:
        await _wait_connected(alice)
        prop = await alice.propose(_proposal_args(Pose(20.0, 15.0, -10.0, 0, 0, 0)))
        await alice.confirm(prop["id"])
        await bob.approve(prop["id"])
        hold = asyncio.create_task(alice.hold(prop["id"]))
        deadline = time.monotonic() + 5
        while local.ok("status")["state"] != "MOVING" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert local.ok("status")["state"] == "MOVING"
        broker.stop()
        t0 = time.monotonic()
        while room.call(lambda: room.couch.is_moving) and time.monotonic() - t0 < 3:
            await asyncio.sleep(0.01)
        assert not room.call(lambda: room.couch.is_moving)
        hold.cancel()
        await asyncio.gather(hold, return_exceptions=True)
    assert local.ok("status")["state"] in ("STOPPED", "FAULT")
    broker.start()
    # The daemon reconnects and republishes its (stopped) state to a new console.
    async with _client(broker, "alice", keys["alice"]) as alice2:
        await _wait_connected(alice2)
        st = await alice2.status()
        assert st["state"] in ("STOPPED", "FAULT")
    assert len(executed(room, "GO")) == 1


async def test_a_replayed_command_is_refused_after_igrtd_restarts(room, broker, keys,
                                                                   mqtt_daemon) -> None:
    async with _client(broker, "alice", keys["alice"]) as alice:
        await _wait_connected(alice)
        jti, token = alice.sign("status", lifetime_s=25)
        first = await alice.request_raw(token, jti)
        assert first.ok
    mqtt_daemon.stop()
    mqtt_daemon.start()  # same state directory: the jti cache is on disk
    async with _client(broker, "alice", keys["alice"]) as alice:
        await _wait_connected(alice)
        again = await alice.request_raw(token, jti)
    assert not again.ok and again.code == "replayed", again
    from daemon.audit import read_records

    rejects = [r for r in read_records(mqtt_daemon.state_dir / "audit")
               if r.details.get("jti") == jti and r.event != "command"]
    assert rejects, "the replayed command left no audit record"


async def test_igrtd_at_rest_publishes_telemetry_every_second(broker, mqtt_daemon) -> None:
    """A console tells a quiet room from a hung igrtd by this (its "stale since" banner)."""
    import aiomqtt

    arrivals: list[float] = []
    async with aiomqtt.Client(broker.host, broker.port, username="console1",
                              password=broker.creds["console1"]) as c:
        await c.subscribe("igrt/demo/telemetry")
        async with asyncio.timeout(10):
            async for _ in c.messages:
                arrivals.append(time.monotonic())
                if len(arrivals) == 4:
                    break
    gaps = np.diff(arrivals)
    assert gaps.max() < 1.6, gaps
