"""`igrt-sim up` as a child process: the pytest plugin's room (sim/testing.py).

    proc = RoomProcess(description_json, run_dir)
    info = proc.start(timeout_s)   # the info of `--json`: sockets, users, pids
    ...                            # talk to it over its sockets only
    proc.stop(timeout_s)           # SIGTERM; SIGKILL if it has not ended by then

The room's devices run in that process, not in the caller's: a test process
busy with its GIL or its garbage collector cannot stall the simulated PLC (a
stale PLC heartbeat is an open interlock to igrtd). The child gets a
parent-death signal (sim/parent_death.py), so it dies with the caller, and
igrtd and Mosquitto with it; the signal follows the *thread* that called
start(), which must outlive the room.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any


class RoomProcess:
    """One `python -m sim.cli up ROOM --run-dir DIR --json` child."""

    def __init__(self, description_json: str, run_dir: Path) -> None:
        self.description_json, self.run_dir = description_json, run_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        # Its stderr goes to an unlinked temp file, not a pipe nobody drains.
        self._stderr: IO[bytes] | None = None

    def start(self, timeout_s: float) -> dict[str, Any]:
        """Start igrt-sim and wait for its info line: the room is up. RuntimeError with
        igrt-sim's own error when it fails, TimeoutError when it takes longer."""
        from sim.parent_death import die_with_parent

        fd, room_file = tempfile.mkstemp(prefix="igrt-room-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.description_json)
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sim.cli", "up", room_file, "--run-dir",
                 str(self.run_dir), "--json"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl, see sim/parent_death.py
            self.info = self._read_info(timeout_s)
            return self.info
        finally:
            with contextlib.suppress(OSError):
                os.unlink(room_file)  # igrt-sim has read it (or never will)

    def _read_info(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"the simulated room did not come up within {timeout_s} s")
        line = self.proc.stdout.readline()
        with contextlib.suppress(ValueError):
            info = json.loads(line)
            if isinstance(info, dict) and "run_dir" in info:
                return info
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)  # no info: igrt-sim is ending with its one-line error
        raise RuntimeError(f"igrt-sim up (exit status {self.proc.returncode}): "
                           f"{self.stderr_tail() or repr(line[:200])}")

    def stderr_tail(self, max_chars: int = 2000) -> str:
        """igrt-sim's stderr so far, as one line."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        return " | ".join(text.strip().splitlines())[-max_chars:]

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM (igrt-sim stops igrtd, Mosquitto and the devices in order), SIGKILL
        if it has not ended within `timeout_s`. Idempotent; igrt-sim's exit status."""
        proc, self.proc = self.proc, None
        status = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                self._kill_orphans()
            status = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        return status

    def _kill_orphans(self) -> None:
        """igrt-sim was SIGKILLed: igrtd and Mosquitto get their parent-death signal;
        make sure of it rather than leave them running."""
        pids = self.info.get("pids") or {}
        for name in ("igrtd", "mosquitto"):
            pid = pids.get(name)
            if isinstance(pid, int):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
