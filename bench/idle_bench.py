"""igrtd's CPU while nothing happens (issue 13, item 7).

    python -m bench.idle_bench

igrtd as a child process (at its systemd priority) with everything a room
connects: the simulated PLC polled over Modbus TCP, the simulated couch on its
serial line (921600 baud, heartbeat running), and a real Mosquitto with the
project's config. CPU is igrtd's own utime + stime from /proc over IDLE_S.

- idle_cpu_percent: STANDBY, no session open (a room between patients, most of
  a day). Budget <= 1.
- idle_cpu_percent_session_open: READY with a session open and nothing
  proposed (a patient on the couch before imaging).
- idle_plc_polls_per_s: PLC reads igrtd made while idle (the simulated PLC's
  own count): the poll rate the idle figure was taken at.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from campaign.rig import Rig

from sim.broker import running_mosquitto

IDLE_S = 10.0
SETTLE_S = 1.0


def cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime, stime


def idle_cpu_percent(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def _wait_links(rig: Rig, state: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        st = rig.status()
        couch_ok = bool((st.get("couch") or {}).get("link_ok"))
        mqtt_ok = "console API connected" in (rig.workdir / "igrtd.log").read_text()
        if st["state"] == state and couch_ok and mqtt_ok and not st["interlocks"]["open"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"room not idle in {state}: {st['state']} ({st['reason']})")
        time.sleep(0.1)


def run(overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """The figures; `overrides` (igrtd config sections) for experiments only."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with running_mosquitto(work / "broker") as broker:
            (work / "igrtd.mqtt.pw").write_text(broker.creds["igrtd"])
            mqtt = {"host": broker.host, "port": broker.port, "username": "igrtd",
                    "password_file": str(work / "igrtd.mqtt.pw")}
            with Rig(work / "room", daemon_overrides={"mqtt": mqtt, **(overrides or {})}) as rig:
                rig.sim("restore")  # every interlock closed, nothing injected
                _wait_links(rig, "STANDBY")
                time.sleep(SETTLE_S)
                polls0 = rig.sim("plc_reads")
                t0 = time.monotonic()
                standby = idle_cpu_percent(rig.pid, IDLE_S)
                polls_per_s = (rig.sim("plc_reads") - polls0) / (time.monotonic() - t0)
                rig.open_session()
                _wait_links(rig, "READY")
                time.sleep(SETTLE_S)
                session = idle_cpu_percent(rig.pid, IDLE_S)
    return {
        "idle_cpu_percent": round(standby, 2),
        "idle_cpu_percent_session_open": round(session, 2),
        "idle_plc_polls_per_s": round(polls_per_s, 1),
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k} = {v}")
