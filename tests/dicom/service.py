"""igrt-dicomd as the clinic sees it: a real process on a free loopback port,
configured like production (tests/dicom/test_storage_service.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.audit.reading import read_records
from sim.parent_death import stop_child

AE = "IGRT_TEST"
SENDER = "TPS_TEST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningService:
    port: int
    storage: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def audit_events(self) -> list[tuple[str, dict[str, object]]]:
        return [(r.event, dict(r.details)) for r in read_records(self.storage / "audit")]


@contextlib.contextmanager
def running_dicom_service(tmp_path: Path, *, peers: list[dict[str, object]] | None = None,
                          **dicom: object) -> Iterator[RunningService]:
    port = free_port()
    config = {
        "room": "dicomroom",
        "state_dir": str(tmp_path / "state"),
        "couch": {"port": "/dev/null"},
        "users": [{"name": "alice", "role": "therapist"}],
        "dicom": {"ae_title": AE, "bind": "127.0.0.1", "port": port,
                  "peers": peers if peers is not None else
                  [{"ae_title": SENDER, "host": "127.0.0.1", "roles": ["send"]}],
                  **dicom},
    }
    path = tmp_path / "room.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "igrt-dicomd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.dicom_service", "--config",
                                 str(path)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        while b"listening on" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"igrt-dicomd did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        yield RunningService(port, tmp_path / "state" / "dicom", proc, log)
    finally:
        stop_child(proc, 10.0)
