"""Damaged frames, late replies and a silent link: never acted on, never replayed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers import couch_protocol as cp
from drivers.couch import CouchClient, CouchLinkLost, CouchRefused, CouchTimeout, LinkEvent
from safety.pose import Pose
from sim.couch import SimCouchController


def flip_bit(frame: bytes, index: int) -> bytes:
    b = bytearray(frame)
    b[index] ^= 0x01
    return bytes(b)


async def test_go_with_flipped_byte_is_nak_bad_crc_and_nothing_moves(
    sim: SimCouchController, raw_host: Any
) -> None:
    seq = raw_host.send(cp.Target((5000, 0, 0, 0, 0, 0), 2000))
    echo = await raw_host.reply(seq)
    assert isinstance(echo, cp.TargetEchoMsg)
    raw_host.seq += 1
    go = cp.encode(raw_host.seq, cp.Go(echo.echo_id))
    raw_host.write(flip_bit(go, 5))  # low byte of the echo id
    nak = await raw_host.reply(raw_host.seq)
    assert isinstance(nak, cp.Nak) and nak.reason == cp.NakReason.BAD_CRC
    await asyncio.sleep(0.05)
    assert sim.executed("GO") == [] and not sim.motion_log


async def test_line_noise_on_go_via_driver_is_never_acted_on(
    sim: SimCouchController, couch: CouchClient
) -> None:
    echo = await couch.send_target(Pose(lat=5.0), validity_ms=2000)
    sim.corrupt_next_received(1)
    with pytest.raises((CouchRefused, CouchTimeout)):
        await couch.go(echo.echo_id)
    await asyncio.sleep(0.05)
    assert sim.executed("GO") == [] and not sim.motion_log
    assert (await couch.status()).crc_errors == 1


async def test_frame_with_wrong_length_is_nak_bad_length(
    sim: SimCouchController, raw_host: Any
) -> None:
    raw_host.seq = 9
    raw_host.write(cp.encode_raw(9, cp.MsgType.GO, b"\x01"))
    nak = await raw_host.reply(9)
    assert isinstance(nak, cp.Nak) and nak.reason == cp.NakReason.BAD_LENGTH
    assert sim.executed("GO") == []


async def test_garbage_on_the_line_does_not_disturb_the_link(
    sim: SimCouchController, raw_host: Any
) -> None:
    raw_host.write(b"\x00\xa5\x5a\x40garbage\xa5\xff" * 5)
    seq = raw_host.send(cp.StatusRequest())
    status = await raw_host.reply(seq, timeout_s=2.0)
    assert isinstance(status, cp.Status) and status.framing_errors > 0


async def test_corrupted_status_reply_is_dropped_and_status_retried(
    sim: SimCouchController,
) -> None:
    async with CouchClient(sim.device_path, heartbeat_interval_s=0, reply_timeout_s=0.2) as couch:
        sim.corrupt_next_replies(1)
        st = await couch.status()
        assert st.state == "IDLE"
        assert len([r for r in sim.frames_received if r.kind == "STATUS_REQ"]) == 3  # connect + 2


async def test_late_target_echo_times_out_and_target_is_not_resent(
    sim: SimCouchController,
) -> None:
    async with CouchClient(sim.device_path, reply_timeout_s=0.1) as couch:
        sim.delay_replies(0.3)
        with pytest.raises(CouchTimeout):
            await couch.send_target(Pose(lat=5.0), validity_ms=2000)
        await asyncio.sleep(0.4)  # the late echo arrives and is discarded
        assert [r.kind for r in sim.frames_received].count("TARGET") == 1
        assert sim.executed("GO") == []


async def test_late_go_ack_times_out_and_go_is_not_resent(sim: SimCouchController) -> None:
    async with CouchClient(sim.device_path, reply_timeout_s=0.2) as couch:
        echo = await couch.send_target(Pose(lat=5.0), validity_ms=2000)
        sim.delay_replies(0.4)
        with pytest.raises(CouchTimeout):
            await couch.go(echo.echo_id)
        await asyncio.sleep(0.5)
        assert [r.kind for r in sim.frames_received].count("GO") == 1
        assert len(sim.executed("GO")) == 1


async def test_silent_link_is_reported_lost_then_restored(sim: SimCouchController) -> None:
    async with CouchClient(sim.device_path, link_timeout_s=0.15) as couch:
        events: list[LinkEvent] = []
        couch.add_listener(lambda e: events.append(e) if isinstance(e, LinkEvent) else None)
        sim.silence_link(0.4)
        await asyncio.sleep(0.3)
        assert not couch.link_ok
        await asyncio.sleep(0.4)
        assert couch.link_ok
        assert [e.ok for e in events] == [False, True]


async def test_controller_gone_fails_requests_with_link_lost() -> None:
    sim = SimCouchController()
    await sim.start()
    async with CouchClient(sim.device_path) as couch:
        await sim.stop()
        await asyncio.sleep(0.1)
        assert not couch.link_ok
        with pytest.raises(CouchLinkLost):
            await couch.status()


async def test_connect_to_missing_port_is_a_one_line_error() -> None:
    with pytest.raises(CouchLinkLost) as err:
        await CouchClient("/dev/does-not-exist-couch").connect()
    assert "/dev/does-not-exist-couch" in str(err.value) and "\n" not in str(err.value)


async def test_rotations_travel_as_micro_degrees_and_translations_as_micrometres(
    sim: SimCouchController, raw_host: Any
) -> None:
    seq = raw_host.send(cp.Target((12_345, 0, 0, 0, 1_500_000, 0), 2000))
    echo = await raw_host.reply(seq)
    assert isinstance(echo, cp.TargetEchoMsg)
    assert echo.positions == (12_345, 0, 0, 0, 1_500_000, 0)
    target = sim.executed("TARGET")[0].details["target"]
    assert (target["lat"], target["pitch"]) == (12.345, 1.5)
