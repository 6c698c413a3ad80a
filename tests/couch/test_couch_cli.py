"""`python -m sim.couch` prints a serial device path the driver can use."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from drivers.couch import CouchClient

ROOT = Path(__file__).resolve().parents[2]


async def test_sim_cli_prints_a_device_path_the_driver_talks_to() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim.couch", "--speed-scale", "2", "--noise-mm", "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
        path = line.decode().strip()
        assert path.startswith("/dev/")
        async with CouchClient(path) as couch:
            st = await couch.status()
            assert st.state == "IDLE" and st.heartbeat_timeout_ms == 250
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10.0) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sim_cli_rejects_bad_option_in_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim.couch", "--speed-scale", "-1",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 10.0)
    assert proc.returncode == 2
    assert err.decode().strip().count("\n") == 0 and "speed scale" in err.decode()
