"""Anything that makes the PLC's word unreliable reports every input open, and the link recovers."""

from __future__ import annotations

import asyncio
import time

from drivers.plc import PlcLinkError, PlcSnapshot, RoomPlcClient
from sim.plc import SimRoomPlc, free_port

from .conftest import STALE_S


def all_open(snap: PlcSnapshot) -> bool:
    return not snap.link_ok and all(not state.closed for state in snap.inputs.values())


async def test_before_the_first_heartbeat_every_input_is_open(plc: SimRoomPlc) -> None:
    client = RoomPlcClient(plc.host, plc.port)
    assert all_open(client.snapshot())
    assert all(client.snapshot().arms_moving.values())


async def test_frozen_heartbeat_reports_every_input_open(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.freeze_heartbeat()
    snap = await client.wait_until(all_open, 2.0)
    assert "heartbeat stale" in snap.link_reason
    assert snap.heartbeat_age_s >= STALE_S


async def test_heartbeat_resuming_restores_the_inputs(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.freeze_heartbeat()
    await client.wait_until(all_open, 2.0)
    plc.resume_heartbeat()
    snap = await client.wait_until(lambda s: s.link_ok, 2.0)
    assert snap.open_inputs() == ("motion_enable_pressed",)


async def test_snapshot_is_fail_safe_even_when_the_event_loop_is_late(
    client: RoomPlcClient,
) -> None:
    time.sleep(STALE_S + 0.05)  # noqa: ASYNC251 - block the loop on purpose: no poll, no watchdog runs
    assert all_open(client.snapshot())


async def test_dropped_connection_reports_every_input_open_at_once(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    heard: list[PlcSnapshot] = []
    client.add_listener(heard.append)
    assert plc.drop_connections() == 1
    await client.wait_until(all_open, 2.0)
    assert "lost" in heard[0].link_reason and all_open(heard[0])


async def test_client_reconnects_after_a_dropped_connection(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.drop_connections()
    await client.wait_until(all_open, 2.0)
    snap = await client.wait_until(lambda s: s.link_ok, 3.0)
    assert snap.open_inputs() == ("motion_enable_pressed",)
    assert plc.connections_accepted == 2


async def test_reconnect_attempts_back_off_exponentially(plc: SimRoomPlc) -> None:
    async with RoomPlcClient(plc.host, plc.port, reconnect_min_s=0.02, reconnect_max_s=2.0) as c:
        await c.wait_until(lambda s: s.link_ok, 5.0)
        plc.refuse_connections()
        await asyncio.sleep(1.0)
        # fixed 20 ms retries would make ~50 attempts; doubling from 20 ms makes ~6
        attempts = plc.connections_accepted - 1
        assert 2 <= attempts <= 9
        plc.refuse_connections(False)
        await c.wait_until(lambda s: s.link_ok, 5.0)


async def test_unreachable_plc_reports_every_input_open_without_raising() -> None:
    port = free_port()
    async with RoomPlcClient("127.0.0.1", port, reconnect_min_s=0.02) as client:
        snap = await client.wait_until(lambda s: "cannot connect" in s.link_reason, 2.0)
        assert all_open(snap)


async def test_slow_answers_count_as_stale_not_fresh(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.set_response_delay(STALE_S + 0.05)  # slower than the staleness limit
    await client.wait_until(all_open, 2.0)
    await asyncio.sleep(0.5)
    assert all_open(client.snapshot())
    plc.set_response_delay(0.0)
    await client.wait_until(lambda s: s.link_ok, 5.0)


async def test_answers_delayed_well_within_the_limit_keep_the_link(plc: SimRoomPlc) -> None:
    async with RoomPlcClient(plc.host, plc.port, heartbeat_stale_s=0.5) as client:
        await client.wait_until(lambda s: s.link_ok, 5.0)
        heard: list[PlcSnapshot] = []
        client.add_listener(heard.append)
        plc.set_response_delay(0.02)
        await asyncio.sleep(0.3)
        assert heard == []
        assert client.snapshot().open_inputs() == ("motion_enable_pressed",)


async def test_exception_answers_report_every_input_open(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.exception_responses(True)
    snap = await client.wait_until(all_open, 2.0)
    assert "Modbus exception code 4" in snap.link_reason
    plc.exception_responses(False)
    await client.wait_until(lambda s: s.link_ok, 3.0)


async def test_fresh_snapshot_comes_from_a_read_sent_after_the_call(
    client: RoomPlcClient,
) -> None:
    asked = time.monotonic()
    snap = await client.fresh_snapshot(timeout_s=1.0)
    assert snap.read_at >= asked and snap.link_ok


async def test_fresh_snapshot_from_a_silent_plc_is_a_link_error(plc: SimRoomPlc,
                                                                 client: RoomPlcClient) -> None:
    plc.exception_responses(True)
    try:
        await client.fresh_snapshot(timeout_s=0.1)
    except PlcLinkError as exc:
        assert "no fresh answer" in str(exc)
    else:
        raise AssertionError("fresh_snapshot returned without a good read")


async def test_non_modbus_peer_reports_every_input_open() -> None:
    # Something that accepts TCP but never answers Modbus (wrong device on the port).
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, RoomPlcClient("127.0.0.1", port, reconnect_min_s=0.02) as client:
        await asyncio.sleep(0.3)
        assert all_open(client.snapshot())
