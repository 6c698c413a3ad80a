"""Issue 11, items 1 and 11, reproduced the way the issue found them: igrtd as a
real process, the couch simulator on a pty, the production Mosquitto config
and ACL. One hostile message on the command topic, live during a move or
retained on the broker before igrtd starts, must not take igrtd down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from joserfc import jws
from joserfc.jwk import OKPKey
from support.mosquitto import running_mosquitto

from daemon.audit import read_records
from daemon.console.client import CommandRefused, ConsoleClient, ConsoleTimeout
from daemon.console.keys import generate_keypair, load_private_key
from daemon.console.tokens import sign_command
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room import DEMO_USERS, DaemonProcess, SimRoom
from sim.world import PatientWorld

from .conftest import FOR, ISO, PATIENT, PLAN, Console, executed

DEEP = '{"a":' + "[" * 5000 + "]" * 5000 + "}"  # the 10 KB reproduction
ROOM = "demo"


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


def _daemon(room: SimRoom, broker: Any, tmp_path: Path) -> DaemonProcess:
    users = []
    for u in DEMO_USERS:
        pub = tmp_path / f"{u['name']}.pub.json"
        users.append({**u, "public_key": json.loads(pub.read_text())} if pub.exists() else u)
    pw = tmp_path / "igrtd.mqtt.pw"
    pw.write_text(broker.creds["igrtd"])
    cfg = room.room_config(tmp_path / "state", users=users,
                           mqtt={"host": broker.host, "port": broker.port, "username": "igrtd",
                                 "password_file": str(pw)})
    return DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log")


def _client(broker: Any, user: str, key: Path) -> ConsoleClient:
    return ConsoleClient(f"mqtt://{broker.host}:{broker.port}", ROOM, user, key,
                         console_id="console1", password=broker.creds["console1"])


async def _publish(broker: Any, payload: str | bytes, *, retain: bool = False) -> None:
    # Any broker account may publish on the command topic (the ACL grants it
    # to every account); this is console2, a machine with no signing key.
    async with aiomqtt.Client(broker.host, broker.port, username="console2",
                              password=broker.creds["console2"]) as c:
        await c.publish(f"igrt/{ROOM}/cmd", payload, qos=1, retain=retain)


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


def _proposal_args(error: Pose) -> dict[str, Any]:
    world = PatientWorld.with_setup_error(ISO, "HFS", tuple(CouchModel.default().pivot), error)
    return {"matrix": np.asarray(world.true_registration(Pose())).tolist(), "iso": list(ISO),
            "patient_position": "HFS",
            "binding": {"patient_id": PATIENT, "plan_uid": PLAN, "frame_of_reference_uid": FOR,
                        "imaging_session_uid": f"IMG-{time.monotonic_ns()}",
                        "acquired_at": time.time()}}


def _rejections(d: DaemonProcess) -> list[dict[str, Any]]:
    return [r.details for r in read_records(d.state_dir / "audit")
            if r.event == "console.command_rejected"]


async def _wait_rejections(d: DaemonProcess, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(_rejections(d)) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return _rejections(d)


async def test_deep_json_published_during_a_move_neither_kills_igrtd_nor_disturbs_the_move(
    room: SimRoom, broker: Any, keys: dict[str, Path], tmp_path: Path
) -> None:
    d = _daemon(room, broker, tmp_path).start()
    try:
        local = Console(d.socket_path, "alice")
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
            # The reproduction: plain, and as the payload of a JWS signed
            # by a key igrtd does not know (any broker account can do this).
            await _publish(broker, DEEP)
            await _publish(broker, jws.serialize_compact(
                {"alg": "Ed25519", "typ": "igrt-cmd+jws"}, DEEP,
                OKPKey.generate_key("Ed25519"), registry=jws.JWSRegistry(algorithms=["Ed25519"])))
            last = await asyncio.wait_for(hold, 30)
        assert d.proc is not None and d.proc.poll() is None, "igrtd died"
        # The move went on to its end under the hold (or, if the machine was
        # too loaded for 20 Hz heartbeats, stopped cleanly); never a crash.
        assert last.get("state") in ("DONE", "STOPPED"), last
        if last.get("state") == "DONE":
            assert not room.call(lambda: room.couch.is_moving)
        assert len(executed(room, "GO")) == 1
        codes = [r["code"] for r in await _wait_rejections(d, 2)]
        assert codes.count("malformed") >= 2, codes
        assert local.ok("status")["state"] in ("DONE", "STOPPED")
    finally:
        rc = d.stop()
    log = (tmp_path / "igrtd.log").read_text()
    assert rc == 0, log[-3000:]
    # Nothing went wrong while serving (shutdown noise of other links aside).
    serving = log.split("igrtd stopping")[0]
    assert "Traceback" not in serving and "RecursionError" not in serving, serving[-3000:]


@pytest.mark.parametrize("hostile", ["deep_json", "valid_signed_command"])
async def test_igrtd_starting_with_a_retained_command_comes_up_and_refuses_it(
    hostile: str, room: SimRoom, broker: Any, keys: dict[str, Path], tmp_path: Path
) -> None:
    jti = None
    if hostile == "deep_json":
        payload = DEEP
    else:
        # Genuine, fresh, signed by a registered therapist: refused all the same,
        # because a stored message is not a person's live request.
        jti = "retained-open-session-1"
        payload = sign_command(
            load_private_key(keys["alice"]), cmd="open_session", sub="alice", aud=ROOM,
            reply_to="console1", lifetime_s=25, jti=jti,
            args={"patient_id": PATIENT, "plan_uid": PLAN, "frame_of_reference_uid": FOR,
                  "iso": list(ISO), "patient_position": "HFS",
                  "manual_override": "typed for the test room"})
    await _publish(broker, payload, retain=True)
    d = _daemon(room, broker, tmp_path).start()
    try:
        rejections = await _wait_rejections(d, 1)
        assert [r["code"] for r in rejections] == ["retained"]
        local = Console(d.socket_path, "alice")
        assert local.ok("status")["state"] == "STANDBY"  # no session opened
        assert d.proc is not None and d.proc.poll() is None
        # igrtd cleared the stored copy: the next start finds nothing.
        cleared = [r for r in read_records(d.state_dir / "audit")
                   if r.event == "console.retained_cleared"]
        deadline = time.monotonic() + 5
        while not cleared and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            cleared = [r for r in read_records(d.state_dir / "audit")
                       if r.event == "console.retained_cleared"]
        assert cleared
        async with _client(broker, "alice", keys["alice"]) as alice:
            await _wait_connected(alice)  # and it serves live commands
    finally:
        d.stop()
    if jti is not None:
        ran = [r for r in read_records(d.state_dir / "audit") if r.details.get("jti") == jti
               and r.event != "console.command_rejected"]
        assert ran == []
    d.start()  # a restart does not see the command again
    try:
        await asyncio.sleep(1.0)
        assert len(_rejections(d)) == 1
    finally:
        d.stop()
