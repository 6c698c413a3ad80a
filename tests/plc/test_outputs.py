"""Coils written by the host reach the PLC; refused or impossible writes raise one-line errors."""

from __future__ import annotations

from drivers.plc import PlcLinkError, PlcWriteError, RoomPlcClient
from sim.plc import SimRoomPlc


async def test_beam_hold_coil_reaches_the_plc(plc: SimRoomPlc, client: RoomPlcClient) -> None:
    await client.set_beam_hold(True)
    assert plc.coil("beam_hold")
    await client.set_beam_hold(False)
    assert not plc.coil("beam_hold")
    assert [(n, v) for _, n, v in plc.coil_changes] == [("beam_hold", True), ("beam_hold", False)]


async def test_motion_permit_lamp_coil_reaches_the_plc(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    await client.set_motion_permit_lamp(True)
    assert plc.coils() == {"beam_hold": False, "motion_permit_lamp": True,
                           "kv_source_extend": False, "detector_extend": False}


async def test_the_plc_echoes_its_outputs_to_the_host(client: RoomPlcClient) -> None:
    await client.set_beam_hold(True)
    snap = await client.wait_until(lambda s: s.outputs["beam_hold"] is True, 2.0)
    assert snap.outputs["motion_permit_lamp"] is False


async def test_write_without_a_link_raises_a_one_line_link_error(plc: SimRoomPlc) -> None:
    client = RoomPlcClient(plc.host, plc.port)  # never entered: not connected
    try:
        await client.set_beam_hold(True)
    except PlcLinkError as exc:
        assert "not connected" in str(exc) and "beam_hold=1" in str(exc)
        assert "\n" not in str(exc)
    else:
        raise AssertionError("write without a link succeeded")
    assert not plc.coil("beam_hold")


async def test_write_refused_by_the_plc_raises_a_write_error(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.exception_responses(True)
    try:
        await client.set_motion_permit_lamp(True)
    except PlcWriteError as exc:
        assert str(exc) == "room PLC refused motion_permit_lamp=1: Modbus exception code 4"
    else:
        raise AssertionError("refused write reported success")
