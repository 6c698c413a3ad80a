"""igrt-dicomd as a child process of the simulator, run from the room's own
configuration file the way systemd runs it beside igrtd
(systemd/igrt-dicom.service)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sim.parent_death import die_with_parent, stop_child


class DicomServiceProcess:
    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> DicomServiceProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.dicom_service", "--config",
                 str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl, see sim/parent_death.py
        deadline = time.monotonic() + timeout
        while b"listening on" not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines() or [""]
                raise RuntimeError(f"igrt-dicomd exited with {self.proc.returncode} "
                                   f"({lines[-1][-300:]}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"igrt-dicomd did not listen within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10.0)
