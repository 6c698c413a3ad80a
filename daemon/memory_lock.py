"""igrtd's memory kept resident: no page fault to the disk on the way to a STOP.

A page of igrtd's code or data that the kernel has evicted is read back from
the disk the next time it is used, and the event loop waits for that read:
milliseconds on a quiet disk, tens under load. Reclaim of cold pages is
ordinary (memory pressure, or proactive reclaim such as DAMON's `pageout`,
which the CI machines run), and the code that runs seldom, the collision
model at a pose not seen for a while, a fault path, is what it evicts.
Real-time daemons lock their memory for this reason; igrtd does so once it
is ready (its modules imported, its models built).

MCL_ONFAULT: pages are locked as they are used, not the whole of every
mapping at once, so igrtd's resident size stays what it uses. Where this
user may not lock memory (RLIMIT_MEMLOCK; systemd/igrtd.service sets
LimitMEMLOCK=infinity), igrtd runs on and says so once.
"""

from __future__ import annotations

import ctypes
import os

MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4


def lock_memory() -> str | None:
    """Lock igrtd's pages in memory as they are used; None, or why not (one line)."""
    try:
        # The process's own symbols, libc among them, as registration_worker.py and
        # sim/parent_death.py reach prctl.
        mlockall = ctypes.CDLL(None, use_errno=True).mlockall
    except (OSError, AttributeError) as exc:
        return f"memory not locked: no mlockall in the C library ({exc})"
    if mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        err = ctypes.get_errno()
        return f"memory not locked: mlockall: {os.strerror(err)} (raise LimitMEMLOCK)"
    return None
