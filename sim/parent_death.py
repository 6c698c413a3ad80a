"""Children of the simulator (igrtd, Mosquitto) die with it, even on SIGKILL.

`igrt-sim up` stops its children in order when it is told to stop; SIGKILL
(or the OOM killer, or a test runner killed mid-test) gives it no chance, and
an orphaned igrtd would hold its sockets and keep a simulated couch "room"
alive for nobody. Linux can deliver a signal to a child when its parent dies
(prctl PR_SET_PDEATHSIG); it is set in the child between fork and exec.

    subprocess.Popen(argv, preexec_fn=die_with_parent())

Caveat (Linux semantics): "parent" is the *thread* that forked. The simulator
forks from asyncio's default executor threads (asyncio.to_thread) or the
caller's thread, which live as long as the room does; a child started from a
short-lived thread would get SIGTERM when that thread ends.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive `sig` when this process dies;
    None where the kernel has no such thing (the child then outlives a SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved here, in the parent: the child between fork and exec should only
        # call, not load libraries.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def _preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return  # best effort: the parent's orderly stop still ends the child
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return _preexec


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if the child has not exited within `timeout_s`: a
    clean shutdown where one is possible, never a child left running."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
