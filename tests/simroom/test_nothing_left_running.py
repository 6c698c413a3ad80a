"""Nothing of a simulated room outlives the process that stood it up: igrt-sim up
killed with SIGKILL (no chance to clean up), and the pytest plugin's room in a
test that fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, SimUp, alive, description, wait_for


def test_sigkill_of_igrt_sim_takes_igrtd_and_mosquitto_with_it(tmp_path: Path) -> None:
    room = SimUp(tmp_path, description(kv_imager=False))  # broker on: mosquitto too
    pids = json.loads((room.run_dir / "info.json").read_text())["pids"]
    try:
        assert alive(pids["igrtd"]) and alive(pids["mosquitto"])
        room.proc.send_signal(signal.SIGKILL)
        room.proc.wait(10)
        # igrtd gets SIGTERM and stops in order (couch stopped, console offline, records
        # synced) within its stop budget, systemd/igrtd.service TimeoutStopSec=20: a full
        # suite on the 2-core machine once saw it take more than 10 s while the broker
        # went down under it.
        wait_for(lambda: not alive(pids["igrtd"]) and not alive(pids["mosquitto"]), 20,
                 "igrtd and mosquitto gone after SIGKILL of igrt-sim")
    finally:
        for pid in (pids["igrtd"], pids["mosquitto"]):  # never leave them to the next test
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


INNER = '''
import json, os

def test_fails_with_a_room(igrt_room_factory):
    room = igrt_room_factory(broker={"enabled": True}, kv_imager=False)
    with open(os.environ["PIDS_FILE"], "w") as f:
        json.dump(room.info["pids"], f)
    room.sim.inject("estop")
    assert False, "this test fails on purpose"
'''


def test_the_plugin_stops_the_room_of_a_failing_test(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    pids_file = tmp_path / "pids.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "PIDS_FILE": str(pids_file),
                            "PYTHONPATH": str(REPO)})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 failed" in r.stdout and "igrtd log" in r.stdout  # the log is in the report
    pids = json.loads(pids_file.read_text())
    assert not alive(pids["igrtd"]) and not alive(pids["mosquitto"])
