"""Imager arms move over time under PLC command and report parked/moving from its inputs."""

from __future__ import annotations

import pytest

from drivers.imager_arms import ImagerArms
from drivers.plc import RoomPlcClient
from sim.plc import SimRoomPlc


async def test_arms_start_parked_and_still(client: RoomPlcClient) -> None:
    arms = ImagerArms(client)
    assert arms.parked and not arms.moving and not arms.extended
    assert arms.positions_pct() == {"kv_source": 0.0, "detector": 0.0}


async def test_extend_moves_the_arms_out_over_time(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    arms = ImagerArms(client)
    await arms.extend()
    await client.wait_until(lambda s: all(s.arms_moving.values()), 2.0)
    assert not arms.parked
    await arms.wait_extended(timeout_s=3.0)
    assert not arms.moving and not arms.parked
    assert arms.positions_pct() == {"kv_source": 100.0, "detector": 100.0}
    assert plc.coil("kv_source_extend") and plc.coil("detector_extend")


async def test_retract_returns_the_arms_to_parked(plc: SimRoomPlc, client: RoomPlcClient) -> None:
    arms = ImagerArms(client)
    await arms.extend()
    await arms.wait_extended(timeout_s=3.0)
    await arms.retract()
    await client.wait_until(lambda s: any(s.arms_moving.values()), 2.0)
    await arms.wait_parked(timeout_s=3.0)
    assert arms.parked and not arms.moving


async def test_arms_stop_where_they_are_when_the_estop_chain_opens(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    arms = ImagerArms(client)
    await arms.extend()
    await client.wait_until(lambda s: all(s.arms_moving.values()), 2.0)
    plc.press_estop()
    await client.wait_until(lambda s: not any(s.arms_moving.values()), 2.0)
    stopped = plc.arm_position_pct("kv_source")
    assert 0.0 < stopped < 100.0
    assert not arms.parked


async def test_arms_count_as_moving_and_unparked_when_the_link_is_lost(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    arms = ImagerArms(client)
    plc.freeze_heartbeat()
    await client.wait_until(lambda s: not s.link_ok, 2.0)
    assert arms.moving and not arms.parked
    assert arms.positions_pct() == {"kv_source": None, "detector": None}


async def test_unknown_arm_is_refused_by_name(client: RoomPlcClient) -> None:
    with pytest.raises(ValueError, match="unknown imager arm 'gantry'"):
        await client.command_arm("gantry", extend=True)
