"""Rooms of a department on one broker: `SimulatedRoom(..., broker=<running Mosquitto>)`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from sim.broker import running_mosquitto
from sim.room_description import RoomDescription
from sim.stack import SimulatedRoom

from .conftest import description


def _room(room: str) -> RoomDescription:
    # No PLC and no kV imager: igrtd and the broker are what this is about.
    return RoomDescription.model_validate(description(room=room, plc=False, kv_imager=False))


async def _retained_status(url_host: str, ws_port: int, user: str, password: str,
                           rooms: set[str], timeout_s: float = 20.0) -> dict[str, Any]:
    """The retained igrt/+/status of `rooms`, read over the WebSockets listener as a
    browser console would, until every room says online."""
    seen: dict[str, Any] = {}
    async with aiomqtt.Client(url_host, ws_port, transport="websockets", username=user,
                              password=password, timeout=5) as client:
        await client.subscribe("igrt/+/status", qos=1)
        async with asyncio.timeout(timeout_s):
            async for msg in client.messages:
                room = str(msg.topic).split("/")[1]
                seen[room] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                if all(seen.get(r, {}).get("status") == "online" for r in rooms):
                    return seen
    raise AssertionError(seen)  # pragma: no cover - the timeout raises first


async def test_two_rooms_share_one_broker_and_leave_it_running(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path, ["igrtd", "console1", "console2"]) as broker:
        async with SimulatedRoom(_room("tr1"), tmp_path / "tr1", broker=broker) as r1, \
                SimulatedRoom(_room("tr2"), tmp_path / "tr2", broker=broker) as r2:
            for room in (r1, r2):
                info = room.info()["broker"]
                assert info["port"] == broker.port and info["ws_url"] == broker.ws_url
                assert info["shared"] is True
                assert set(info["passwords"]) == {"igrtd", "console1", "console2"}
                assert room.info()["pids"]["mosquitto"] is None  # not the room's process
                users_file = Path(room.info()["igrtd"]["users_file"])
                assert json.loads(users_file.read_text()) == {"v": 1, "users": []}
            seen = await _retained_status(broker.host, broker.ws_port, "console1",
                                          broker.creds["console1"], {"tr1", "tr2"})
            assert seen["tr1"]["room"] == "tr1" and seen["tr2"]["room"] == "tr2"
        assert broker.running  # neither room stopped it


async def test_a_shared_broker_without_the_rooms_accounts_is_refused(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path, ["igrtd", "console1"]) as broker:
        room = SimulatedRoom(_room("tr1"), tmp_path / "tr1", broker=broker)
        with pytest.raises(ValueError, match="no account for console2"):
            async with room:
                pass  # pragma: no cover
        assert broker.running
