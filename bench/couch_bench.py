"""Couch serial link figures, real driver against the simulated controller.

The simulator runs as its own process (`python -m sim.couch`), so the client
and the controller do not share an event loop, as on a real serial line. The
line runs at igrtd's default speed (BAUD, 921600 8N1) with its real wire time
in both directions (sim/serial_wire.py; docs/protocols/couch-serial.md "Wire
time"), so each figure has a floor the wire sets, whatever the software does.

`run()` returns:
- couch_rtt_p50_us / _p99_us / _max_us / _samples: `CouchClient.status()`
  call to return over the pty, 2000 samples after a warm-up (heartbeats
  running alongside, as in service). Wire floor: STATUS_REQ 7 B in + STATUS
  49 B out = 0.61 ms at 921600 (4.9 ms at 115200), +0.53 ms behind a STATUS push
  already going out.
- couch_stop_ack_p50_us / _max_us / _samples: `stop()` call to its ACK, during
  a move. Wire floor: STOP 7 B in, then the STATUS push of the state change
  (49 B) and the ACK (8 B) out = 0.70 ms at 921600 (5.6 ms at 115200), +0.53 ms
  behind a periodic push. 20 moves under `make bench`, 1,000 (and a `_p99_us`) under
  `make bench-long` (each move cruises 0.6 s first, so ~15 min).
- couch_stop_latency_p50_ms / _max_ms / _samples (same moves): `stop()` call
  during a ~20 mm/s move to the controller's STATUS saying no axis moves
  (includes the controller's emergency deceleration, ~0.1 s at the default
  limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.stats import samples, tail_figures
from drivers import couch_protocol as cp
from drivers.couch import CouchClient, CouchEvent, CouchStatus
from safety.pose import Pose

_ROOT = Path(__file__).resolve().parent.parent
RTT_SAMPLES = 2000
STOP_TRIALS = 20
BAUD = cp.DEFAULT_BAUDRATE  # igrtd's default; the simulator runs its wire at the same


async def _measure(path: str) -> dict[str, float]:
    out: dict[str, float] = {}
    async with CouchClient(path, baudrate=BAUD) as couch:
        for _ in range(200):
            await couch.status()
        rtt: list[float] = []
        for _ in range(RTT_SAMPLES):
            t0 = time.perf_counter_ns()
            await couch.status()
            rtt.append((time.perf_counter_ns() - t0) / 1000.0)
        out.update(tail_figures("couch_rtt", "us", rtt))

        halted = asyncio.Event()

        def on_event(ev: CouchEvent) -> None:
            if isinstance(ev, CouchStatus) and not ev.any_moving:
                halted.set()

        couch.add_listener(on_event)
        ack: list[float] = []
        stop_ms: list[float] = []
        for i in range(samples(STOP_TRIALS)):
            start = (await couch.status()).pose
            target = start.plus(Pose(lat=30.0 if i % 2 == 0 else -30.0))
            echo = await couch.send_target(target, validity_ms=1000)
            await couch.go(echo.echo_id)
            await asyncio.sleep(0.6)  # cruising at full speed
            halted.clear()
            t1 = time.perf_counter()
            await couch.stop()
            ack.append((time.perf_counter() - t1) * 1e6)
            await asyncio.wait_for(halted.wait(), 2.0)
            stop_ms.append((time.perf_counter() - t1) * 1e3)
        out.update(tail_figures("couch_stop_ack", "us", ack))
        out.update(tail_figures("couch_stop_latency", "ms", stop_ms))
    return out


def run() -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.couch", "--heartbeat-timeout-ms", "500",
         "--baud", str(BAUD)],
        cwd=_ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        if not path.startswith("/dev/"):
            raise RuntimeError(f"sim.couch did not print a device path (got {path!r})")
        return asyncio.run(_measure(path))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}: {value:.1f}")
