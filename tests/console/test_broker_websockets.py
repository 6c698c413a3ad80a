"""The broker's WebSockets listener (the browser console's): the same accounts, ACL and
limits as the plain one, because the production config sets per_listener_settings false."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from support.mosquitto import running_mosquitto

from sim.broker import PROJECT_ACL, PROJECT_CONF


def _ws(broker: Any, user: str | None, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.ws_port, transport="websockets", username=user,
                          password=password, timeout=5)


def _tcp(broker: Any, user: str) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, username=user,
                          password=broker.creds[user], timeout=5)


async def _refused(client: aiomqtt.Client) -> str:
    with pytest.raises(aiomqtt.MqttError) as err:
        async with client:
            pass  # pragma: no cover - refused at connect
    return str(err.value)


async def _first(client: aiomqtt.Client, topic: str, timeout_s: float = 3.0) -> bytes | None:
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(timeout_s):
            async for msg in client.messages:
                return bytes(msg.payload)  # type: ignore[arg-type]
    except TimeoutError:
        return None
    return None  # pragma: no cover


def test_the_production_config_has_a_tls_websockets_listener_and_the_review_acl() -> None:
    conf = [line.split() for line in PROJECT_CONF.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert ["per_listener_settings", "false"] in conf
    assert ["max_packet_size", "262144"] in conf
    ws = conf.index(["listener", "9443", "0.0.0.0"])
    tail = conf[ws + 1:]
    block = tail[:next((i for i, w in enumerate(tail) if w[0] == "listener"), len(tail))]
    assert ["protocol", "websockets"] in block
    assert {w[0] for w in block} >= {"certfile", "keyfile", "cafile"}  # TLS, never plain
    acl = PROJECT_ACL.read_text().splitlines()
    assert "pattern read igrt/+/review/#" in acl
    daemon = acl[acl.index("user igrtd"):]
    assert "topic write igrt/+/review/#" in daemon


async def test_websockets_refuse_anonymous_and_wrong_passwords_and_take_accounts(
        tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as broker:
        assert broker.ws_url == f"ws://127.0.0.1:{broker.ws_port}"
        assert broker.ws_port != broker.port
        for _ in range(2):  # and again after a restart, on the same ports
            assert "Not authorized" in await _refused(_ws(broker, None))
            assert "Not authorized" in await _refused(_ws(broker, "console1", "wrong"))
            async with _ws(broker, "console1", broker.creds["console1"]) as c:
                await c.publish("igrt/room1/cmd", b"x", qos=1)
            ports = (broker.port, broker.ws_port)
            broker.restart()
            assert (broker.port, broker.ws_port) == ports


async def test_review_images_igrtd_publishes_reach_a_browser_and_consoles_cannot_forge_them(
        tmp_path: Path) -> None:
    image = b"A" * 180_000  # a review image is ~130 KB: above the old 64 KiB packet limit
    with running_mosquitto(tmp_path) as broker:
        async with _tcp(broker, "console2") as forger:
            await forger.publish("igrt/room1/review/axial/fixed", b"forged", qos=1, retain=True)
        async with _tcp(broker, "igrtd") as igrtd:
            await igrtd.publish("igrt/room1/review/axial/moving_after", image, qos=1,
                                retain=True)
            await igrtd.publish("igrt/room1/review/meta", b"{}", qos=1, retain=True)
        with contextlib.suppress(aiomqtt.MqttError):  # the broker disconnects it for this
            async with _tcp(broker, "igrtd") as igrtd:
                await igrtd.publish("igrt/room1/review/sagittal/fixed", b"x" * 300_000,
                                    qos=0, retain=True)
                await asyncio.sleep(0.3)
        # Over the plain listener: Mosquitto 2.0's WebSockets listener needs ~4 s for
        # this size (4 KiB per 100 ms loop pass when idle; daemon/console_web/bridge.py).
        async with _tcp(broker, "console1") as console:
            assert await _first(console, "igrt/room1/review/axial/moving_after") == image
        async with _ws(broker, "console1", broker.creds["console1"]) as browser:
            assert await _first(browser, "igrt/room1/review/meta") == b"{}"
        async with _ws(broker, "console1", broker.creds["console1"]) as browser:
            assert await _first(browser, "igrt/room1/review/axial/fixed", 1.0) is None
        async with _ws(broker, "console1", broker.creds["console1"]) as browser:
            # Above max_packet_size: dropped at the broker (igrtd is disconnected for it).
            assert await _first(browser, "igrt/room1/review/sagittal/fixed", 1.0) is None
