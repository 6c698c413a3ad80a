"""Each control operation acts on the real simulated devices, and igrtd sees it over
the real wires. One room for the module: every test leaves it clear."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .conftest import SimUp, wait_for


@pytest.fixture
def room(sim_room: SimUp) -> Iterator[SimUp]:
    # A freshly started igrtd reports the PLC open until it has seen the heartbeat
    # change; each test starts from a room igrtd sees closed.
    wait_for(lambda: sim_room.igrtd("status")["interlocks"]["open"] == [], 10,
             "igrtd seeing the room closed before the test")
    yield sim_room
    sim_room.ctl("clear")
    sim_room.ctl("pendant", pressed=False)


def _open(room: SimUp) -> list[str]:
    opened: list[str] = room.igrtd("status")["interlocks"]["open"]
    return opened


@pytest.mark.parametrize("fault", [
    {"fault": "interlock_open", "name": "door_closed"},
    {"fault": "interlock_open", "name": "collision_pads_clear"},
    {"fault": "estop"},
    {"fault": "plc_fault_code", "code": 7},
    {"fault": "plc_heartbeat_freeze", "frozen": True},
], ids=lambda f: f.get("name", f["fault"]))
def test_plc_faults_reach_igrtd_and_clear_restores_the_room(room: SimUp, fault: dict) -> None:
    room.ctl("inject", **fault)
    wait_for(lambda: _open(room), 5, f"igrtd reporting {fault} as an open interlock")
    room.ctl("clear")
    wait_for(lambda: _open(room) == [], 5, "igrtd seeing the room closed again")


def test_door_open_is_named_by_igrtd_and_recorded_by_the_plc(room: SimUp) -> None:
    since = room.ctl("record", device="plc")["now_monotonic"]
    room.ctl("inject", fault="interlock_open", name="door_closed")
    wait_for(lambda: any("door" in x for x in _open(room)), 5, "door open in igrtd")
    assert room.ctl("truth")["plc"]["inputs"]["door_closed"] is False
    changes = room.ctl("record", device="plc", since=since)["input_changes"]
    assert [(c["name"], c["value"]) for c in changes] == [("door_closed", False)]
    room.ctl("inject", fault="interlock_close", name="door_closed")
    wait_for(lambda: _open(room) == [], 5, "door closed in igrtd")


def test_plc_link_loss_ends_by_itself(room: SimUp) -> None:
    room.ctl("inject", fault="plc_link_loss", seconds=1.0)
    wait_for(lambda: _open(room), 5, "igrtd losing the PLC")
    wait_for(lambda: _open(room) == [], 10, "igrtd back on the PLC")


def test_pendant_is_the_motion_enable_input(room: SimUp) -> None:
    room.ctl("pendant", pressed=True)
    wait_for(lambda: room.igrtd("status")["interlocks"]["motion_enable_pressed"], 5,
             "igrtd seeing the pendant pressed")
    room.ctl("pendant", pressed=False)
    wait_for(lambda: not room.igrtd("status")["interlocks"]["motion_enable_pressed"], 5,
             "igrtd seeing the pendant released")


def test_couch_link_loss_is_seen_by_igrtd_and_ends(room: SimUp) -> None:
    room.ctl("inject", fault="couch_link_loss", seconds=1.5)
    wait_for(lambda: not room.igrtd("status")["couch"]["link_ok"], 5, "link lost in igrtd")
    wait_for(lambda: room.igrtd("status")["couch"]["link_ok"], 10, "link back in igrtd")


def test_dropped_and_corrupted_couch_frames_are_survived(room: SimUp) -> None:
    room.ctl("inject", fault="couch_drop_frames", n=2)
    room.ctl("inject", fault="couch_corrupt_frames", n=2)
    time.sleep(0.5)
    assert room.igrtd("status")["couch"]["link_ok"]


def test_imager_failure_and_clear_reconnect(room: SimUp) -> None:
    def connected() -> bool:
        return bool(room.igrtd("monitor_status")["imager"]["connected"])

    wait_for(connected, 10, "kV imager connected")
    room.ctl("inject", fault="imager_failure")
    wait_for(lambda: not connected(), 5, "igrtd seeing the imager gone")
    assert room.ctl("truth")["kv_imager"]["connected"] is False
    room.ctl("clear")
    wait_for(connected, 10, "kV imager reconnected")


def test_patient_and_gantry_are_in_the_truth(room: SimUp) -> None:
    room.ctl("patient", setup_error={"lat": 2.0}, drift_mm_s=[0.0, 1.0, 0.0])
    room.ctl("gantry", angle_deg=90.0)
    t1 = room.ctl("truth")
    time.sleep(0.3)
    t2 = room.ctl("truth")
    assert t2["patient"]["setup_error"]["lat"] == 2.0
    assert t2["patient"]["displacement_mm"][1] > t1["patient"]["displacement_mm"][1]
    assert t2["gantry"]["angle_deg"] == 90.0 and "PLC" in t2["gantry"]["note"]
    assert t2["gantry"]["register"] == 9000  # on the PLC's wire, in 0.01 deg
    room.ctl("patient", drift_mm_s=[0.0, 0.0, 0.0], breathing={"amplitude_mm": 5.0,
                                                                "period_s": 4.0})
    assert room.ctl("truth")["patient"]["breathing"]["amplitude_mm"] == 5.0


@pytest.mark.parametrize("op, args, expect", [
    ("inject", {"fault": "plc_link_loss", "seconds": 900}, "900 s exceeds the limit 600"),
    ("inject", {"fault": "couch_runaway", "axis": "yaw", "speed": 9.0}, "+-5 deg/s"),
    ("inject", {"fault": "couch_pose_jump", "axis": "lat", "delta": 1e6}, "+-100 mm"),
    ("inject", {"fault": "interlock_open", "name": "window"}, "name"),
    ("inject", {"fault": "couch_drop_frames", "n": True}, "n"),
    ("inject", {"fault": "melt"}, "fault"),
    ("gantry", {"angle_deg": 360}, "360 deg must be below 360"),
    ("gantry", {"angle_deg": "90"}, "valid number"),
    ("record", {"device": "couch", "since": -1}, "is below the minimum 0"),
    ("patient", {}, "give setup_error"),
    ("pendant", {"pressed": True, "extra": 1}, "extra"),
    ("nope", {}, "unknown op"),
])
def test_bad_arguments_are_refused_in_one_line(room: SimUp, op: str, args: dict,
                                               expect: str) -> None:
    error = room.ctl_refused(op, **args)
    assert expect in error and "\n" not in error


def test_acquire_cbct_writes_an_image_through_the_true_pose(room: SimUp) -> None:
    out = room.ctl("acquire_cbct", path="cbct_test.mha")
    assert out["path"].endswith("images/cbct_test.mha")
    assert out["couch_pose"] == room.ctl("truth")["couch"]["pose"]  # idle couch: same pose
    import SimpleITK as sitk

    image = sitk.ReadImage(out["path"])
    assert image.GetDimension() == 3
    assert "never overwrites" in room.ctl_refused("acquire_cbct", path="cbct_test.mha")
    assert "'..'" in room.ctl_refused("acquire_cbct", path="../escape.mha")
