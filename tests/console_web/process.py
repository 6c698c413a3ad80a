"""Stopping an igrt-console process a test started (both test modules use it)."""

from __future__ import annotations

import signal
import subprocess


def stop_console(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then (exit status, stderr); a server that ignores SIGTERM fails the test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError("igrt-console did not stop on SIGTERM within 10 s") from None
    return proc.returncode, err
