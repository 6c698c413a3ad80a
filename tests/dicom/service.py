"""igrt-dicomd as the clinic sees it: a real process on a free loopback port,
configured like production (tests/dicom/test_storage_service.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.audit.reading import read_records
from sim.dicom_node import DicomServiceProcess

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
    node = DicomServiceProcess(path, log)
    try:
        node.start()
        assert node.proc is not None
        yield RunningService(port, tmp_path / "state" / "dicom", node.proc, log)
    finally:
        node.stop()
