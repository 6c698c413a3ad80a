"""Bad configuration is refused in one line; the simulator runs standalone for service engineers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.plc import RoomPlcClient
from sim.plc import SimRoomPlc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("port", [0, -1, 70000])
def test_client_refuses_a_port_out_of_range(port: int) -> None:
    with pytest.raises(ValueError, match=rf"^room PLC port {port} is out of range 1..65535$"):
        RoomPlcClient("127.0.0.1", port)


def test_client_refuses_a_staleness_limit_shorter_than_four_poll_cycles() -> None:
    with pytest.raises(ValueError, match="heartbeat staleness limit 0.01 s"):
        RoomPlcClient("127.0.0.1", 502, poll_interval_s=0.005, heartbeat_stale_s=0.01)


def test_client_refuses_an_idle_poll_faster_than_the_motion_poll() -> None:
    with pytest.raises(ValueError, match="idle poll interval 0.001 s"):
        RoomPlcClient("127.0.0.1", 502, poll_interval_s=0.0025, idle_poll_interval_s=0.001)


def test_simulator_refuses_a_port_out_of_range() -> None:
    with pytest.raises(ValueError, match="simulated PLC port 70000 is out of range"):
        SimRoomPlc(port=70000)


async def test_simulator_on_a_busy_port_fails_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        plc = SimRoomPlc(port=busy.getsockname()[1])
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1:"):
            await plc.start()


def test_standalone_simulator_rejects_a_bad_port_in_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "sim.plc", "--port", "70000"], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr == "error: --port 70000 is out of range 0..65535\n"


def test_standalone_simulator_prints_host_port_and_answers_commands() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sim.plc", "--port", "0"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        host, port = proc.stdout.readline().strip().rsplit(":", 1)
        assert host == "127.0.0.1" and 0 < int(port) < 65536
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        out, _ = proc.communicate("set door_closed 0\nbogus\nstatus\nquit\n", timeout=20)
    finally:
        proc.kill()
    lines = out.splitlines()
    assert lines[0] == "ok"
    assert lines[1] == "error: unknown command 'bogus' (try 'help')"
    assert "door_closed=0" in lines[2]
    assert proc.returncode == 0


def test_standalone_simulator_forces_and_releases_a_raw_register() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sim.plc", "--port", "0"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()
        out, _ = proc.communicate("raw 3 65535\nstatus\nraw 3 -\nraw 10 1\nquit\n", timeout=20)
    finally:
        proc.kill()
    assert out.splitlines()[0] == "ok"
    assert "forced registers: 3=65535" in out
    assert out.splitlines()[-2:] == ["ok", "error: PLC status register 10 is out of range 0..9"]


def test_standalone_simulator_sets_and_turns_the_gantry() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sim.plc", "--port", "0"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()
        out, _ = proc.communicate("gantry 90\nstatus\ngantry 100 5\ngantry 400\nquit\n",
                                  timeout=20)
    finally:
        proc.kill()
    lines = out.splitlines()
    assert lines[0] == "ok"
    assert "gantry: 90.00 deg (target 90.00)" in out
    assert "turning, 2.0 s" in lines
    assert lines[-1] == ("error: gantry angle 400.0 deg is out of range 0..360 deg "
                         "(IEC 61217; 360 excluded: it is 0)")
