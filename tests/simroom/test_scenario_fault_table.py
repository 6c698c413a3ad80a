"""The fault campaign injects through the simulator's one fault table: every campaign
kind is a fault of sim/control_faults.py and calls the device method it always did,
with the same value, and records the same answer."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest

from safety.pose import Pose
from sim import control_faults as cf
from tests.campaign.rig import ACTIONS, FAULTS

# campaign kind, value -> (device, method, args) the campaign called before the table.
CASES: list[tuple[str, Any, str, str, tuple[Any, ...]]] = [
    ("door_closed", False, "plc", "set_input", ("door_closed", False)),
    ("motion_enable_pressed", True, "plc", "set_input", ("motion_enable_pressed", True)),
    ("plc_drop", None, "plc", "drop_connections", ()),
    ("plc_heartbeat_frozen", True, "plc", "freeze_heartbeat", (True,)),
    ("plc_delay", 0.03, "plc", "set_response_delay", (0.03,)),
    ("couch_silence", 0.2, "couch", "silence_link", (0.2,)),
    ("couch_delay", 0.005, "couch", "delay_replies", (0.005,)),
    ("plc_fault_code", 0x8000, "plc", "set_fault_code", (0x8000,)),
    ("plc_raw_register", (3, 4096), "plc", "set_raw_register", (3, 4096)),
    ("plc_raw_register", (3, None), "plc", "set_raw_register", (3, None)),
    ("runaway", ("yaw", -1.5), "couch", "inject_runaway", ("yaw", -1.5)),
    ("pose_jump", ("vert", 20.0), "couch", "inject_pose_jump", ("vert", 20.0)),
]


def _devices() -> tuple[mock.Mock, mock.Mock]:
    couch, plc = mock.Mock(), mock.Mock()
    couch.is_moving = False
    couch.pose = Pose(1.0, 2.0, 3.0, 0.5, 0.0, 0.0)
    plc.drop_connections.return_value = 2
    plc.status_word.return_value = 0x00FF
    return couch, plc


def test_every_campaign_kind_is_a_fault_of_the_table() -> None:
    assert set(ACTIONS) == set(FAULTS)
    for kind in FAULTS:
        assert kind in {c[0] for c in CASES} | {
            "estop_chain_ok", "collision_pads_clear", "imager_kv_source_parked",
            "imager_detector_parked", "interlock_pulse", "set_pose"}, kind


@pytest.mark.parametrize(("kind", "value", "device", "method", "args"), CASES)
def test_a_campaign_fault_calls_the_same_device_method(kind: str, value: Any, device: str,
                                                       method: str, args: tuple[Any, ...]) -> None:
    couch, plc = _devices()
    result = ACTIONS[kind](couch, plc, value)
    dev = {"couch": couch, "plc": plc}[device]
    getattr(dev, method).assert_called_once_with(*args)
    expected = {"plc_drop": 2, "plc_raw_register": args}.get(kind)
    assert result == (tuple(expected) if isinstance(expected, tuple) else expected)


def test_a_reserved_bit_is_added_to_the_live_status_word() -> None:
    couch, plc = _devices()
    assert ACTIONS["plc_raw_register"](couch, plc, (0, -(1 << 9))) == (0, 0x00FF | 1 << 9)
    plc.set_raw_register.assert_called_once_with(0, 0x00FF | 1 << 9)


def test_moving_the_couch_by_hand_records_the_new_pose_or_refuses_while_moving() -> None:
    couch, plc = _devices()
    pose = ACTIONS["set_pose"](couch, plc, {"lat": 5.0})
    assert pose == Pose(6.0, 2.0, 3.0, 0.5, 0.0, 0.0)
    couch.set_pose.assert_called_once_with(pose)
    couch.is_moving = True
    assert ACTIONS["set_pose"](couch, plc, {"lat": 5.0}) == "refused: moving"


def test_an_interlock_pulse_closes_again_on_the_loop() -> None:
    couch, plc = _devices()

    async def go() -> None:
        assert ACTIONS["interlock_pulse"](couch, plc, ("collision_pads_clear", 0.01)) is None
        plc.set_input.assert_called_once_with("collision_pads_clear", False)
        await asyncio.sleep(0.05)
        plc.set_input.assert_called_with("collision_pads_clear", True)

    asyncio.run(go())


def test_a_fault_needing_an_absent_device_is_refused() -> None:
    with pytest.raises(cf.FaultError, match="no PLC"):
        cf.apply(cf.Estop(fault="estop"), None, None)
    with pytest.raises(cf.FaultError, match="couch controller"):
        cf.apply(cf.CouchDelay(fault="couch_delay", seconds=0.1), None, None)
