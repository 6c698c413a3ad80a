"""`igrt-sim up` stands the whole room up and takes it down with nothing left running;
it refuses a production igrtd configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, SimUp, alive, description, wait_for


def test_default_room_comes_up_with_every_device_and_goes_down_leaving_nothing(
        tmp_path: Path) -> None:
    room = SimUp(tmp_path, description())  # broker, PLC and kV imager on
    try:
        info = room.info
        pids = info["pids"]
        assert alive(pids["igrtd"]) and alive(pids["mosquitto"])
        assert (room.control.stat().st_mode & 0o777) == 0o600
        assert (Path(info["run_dir"]).stat().st_mode & 0o777) == 0o700
        assert set(info["broker"]["passwords"]) == {"igrtd", "console1", "console2"}
        assert {u["name"] for u in info["users"]} == {"alice", "bob", "sam", "vic"}
        assert Path(info["users"][1]["key"]).is_file()
        with socket.create_connection((info["broker"]["host"], info["broker"]["port"]), 2):
            pass
        status = room.igrtd("status")
        assert status["room"] == "sim" and status["interlocks"]["monitored"]
        assert room.igrtd("status", user="bob")["couch"]["link_ok"]  # a demo key signs
        wait_for(lambda: room.igrtd("monitor_status")["imager"]["connected"], 10,
                 "igrtd seeing the kV imager")
        described = room.ctl("describe")
        assert described["info"]["control_socket"] == str(room.control)
        assert [o["name"] for o in described["ops"]][:3] == ["describe", "truth", "inject"]
    finally:
        rc, err = room.stop()
    assert rc == 0, err
    wait_for(lambda: not alive(pids["igrtd"]) and not alive(pids["mosquitto"]), 5,
             "igrtd and mosquitto gone")
    assert not room.control.exists()
    assert "Traceback" not in err


def _locked_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmLck:")[1].split()[0])


def test_igrtd_keeps_its_memory_resident_once_ready(tmp_path: Path) -> None:
    """Pages igrtd has used are locked (daemon/memory_lock.py): none is read back from
    the disk on the way to a STOP. Root here, as in CI; systemd gives igrtd the limit."""
    if os.geteuid() != 0:
        pytest.skip("locking memory needs CAP_IPC_LOCK or LimitMEMLOCK (igrtd.service)")
    room = SimUp(tmp_path, description(broker={"enabled": False}, kv_imager=False))
    try:
        pid = room.info["pids"]["igrtd"]
        wait_for(lambda: _locked_kb(pid) > 10_000, 10, "igrtd's memory locked")
    finally:
        rc, err = room.stop()
    assert rc == 0, err


def test_the_rooms_plc_staleness_limit_is_igrtds(tmp_path: Path) -> None:
    """`plc_heartbeat_stale_s` in the room description is igrtd's plc.heartbeat_stale_s
    (a long QA test on a shared machine sets it; the default is igrtd's own)."""
    room = SimUp(tmp_path, description(broker={"enabled": False}, kv_imager=False,
                                       plc_heartbeat_stale_s=0.3))
    try:
        config = json.loads(Path(room.info["igrtd"]["config"]).read_text())
        assert config["plc"]["heartbeat_stale_s"] == 0.3
        assert room.igrtd("status")["interlocks"]["monitored"]
    finally:
        rc, err = room.stop()
    assert rc == 0, err


def _up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sim.cli", "up", *args], check=False,
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_production_igrtd_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "room.json"
    cfg.write_text(json.dumps({"room": "tr1", "state_dir": "/var/lib/igrt",
                               "couch": {"port": "/dev/ttyUSB0"},
                               "users": [{"name": "alice", "role": "therapist"}]}))
    r = _up(str(cfg), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "production config" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_bad_room_description_is_refused_in_one_line(tmp_path: Path) -> None:
    for text, expect in (
        ('{"format": "igrt-sim-room/1", "seed": NaN}', "NaN"),
        ('{"format": "igrt-sim-room/1", "couch": {"speed_scale": 1e999}}', "finite"),
        ('{"format": "igrt-sim-room/1", "couch": {"speed_scale": 99}}', "limit 20"),
        ('{"format": "igrt-sim-room/1", "plc": 1}', "plc"),
        ('[1, 2]', "JSON object"),
    ):
        room = tmp_path / "room.json"
        room.write_text(text)
        r = _up(str(room))
        assert r.returncode == 2, (text, r.stderr)
        assert r.stderr.count("\n") == 1 and expect in r.stderr, (text, r.stderr)
