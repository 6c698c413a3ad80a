"""Room PLC link figures: input-change-to-client-event latency and polling CPU cost.

`run()` returns:
- plc_input_to_client_event_p50_ms / _p99_ms / _max_ms / _samples (>= 1,000
  door flips, ~20 s): from `SimRoomPlc.set_input`
  (the input changing on the simulator's wire image) to the RoomPlcClient
  listener hearing it, over a real loopback Modbus TCP socket, at the default
  2.5 ms poll interval. The simulator runs in its own process (in the same
  process, event-loop or GIL hand-overs line the flips up with the polls and
  flatter the figure); both sides use CLOCK_MONOTONIC, which is system-wide.
- plc_client_idle_cpu_percent: CPU of a process that only runs the client
  (default 2.5 ms poll) against a simulator in another process, ~5 s.
- plc_client_idle_cpu_percent_at_20ms_poll: the same with a 20 ms poll
  (what `set_fast_poll(False)` with idle_poll_interval_s=0.02 costs).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from bench.stats import tail_figures
from drivers.plc import PlcSnapshot, RoomPlcClient
from sim.plc import SimRoomPlc

_ROOT = Path(__file__).resolve().parent.parent


def _flipping_plc(conn: Connection, flips: int, seed: int) -> None:
    """Child process: a simulated PLC that flips the door at random, PLC-side times."""

    async def main() -> None:
        rng = random.Random(seed)
        # No pulse stretching: the door flips faster than its 50 ms minimum opening.
        async with SimRoomPlc(min_open_s=0.0) as plc:
            conn.send(plc.port)
            await asyncio.to_thread(conn.recv)  # the client is linked
            plc.clear_records()
            for _ in range(flips):
                await asyncio.sleep(rng.uniform(0.01, 0.03))
                plc.set_input("door_closed", not plc.input("door_closed"))
            await asyncio.sleep(0.1)
            conn.send([(t, v) for t, name, v in plc.input_changes if name == "door_closed"])
            await asyncio.to_thread(conn.recv)  # the client is done

    asyncio.run(main())


async def _listen(conn: Connection, port: int) -> tuple[list[tuple[float, bool]],
                                                          list[tuple[float, bool]]]:
    heard: list[tuple[float, bool]] = []

    def on_change(snap: PlcSnapshot) -> None:
        if not snap.link_ok:
            # A link glitch (a stall of a loaded machine) forces every input open;
            # that is not a door change, so it is not a latency sample.
            return
        closed = snap.inputs["door_closed"].closed
        if not heard or heard[-1][1] != closed:
            heard.append((time.monotonic(), closed))

    async with RoomPlcClient("127.0.0.1", port) as client:
        await client.wait_until(lambda s: s.link_ok, 5.0)
        client.add_listener(on_change)
        heard.append((time.monotonic(), client.snapshot().inputs["door_closed"].closed))
        conn.send("go")
        changes: list[tuple[float, bool]] = await asyncio.to_thread(conn.recv)
    conn.send("done")  # only now may the simulator go away
    return changes, heard[1:]


# 1,050 flips: a run may lose up to 1 % to link glitches (see _match) and still
# leave the 1,000 samples a p99 needs.
def _latency_ms(flips: int = 1050, seed: int = 5) -> list[float]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_flipping_plc, args=(theirs, flips, seed), daemon=True)
    proc.start()
    try:
        if not ours.poll(20.0):
            raise RuntimeError("simulated PLC process did not start")
        port = ours.recv()
        changes, heard = asyncio.run(_listen(ours, port))
    finally:
        proc.join(10.0)
        if proc.is_alive():
            proc.terminate()
    return _match(changes, heard)


def _match(changes: list[tuple[float, bool]], heard: list[tuple[float, bool]]) -> list[float]:
    """Latency of each PLC change to the first later client event with its value.

    A change the client never reported on its own (it fell inside a link
    glitch and was undone before the link came back) has no sample; a run
    with more than 1 % of those is an error, not a figure.
    """
    latencies: list[float] = []
    i = 0
    for t_changed, value in changes:
        while i < len(heard) and heard[i][0] < t_changed:
            i += 1
        if i < len(heard) and heard[i][1] == value:
            latencies.append((heard[i][0] - t_changed) * 1000.0)
            i += 1
    if len(latencies) < 0.99 * len(changes):
        raise RuntimeError(
            f"client reported {len(latencies)} of {len(changes)} door changes; no figure"
        )
    return latencies


async def _client_cpu_percent(poll_s: float, seconds: float) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim.plc", "--port", "0",
        cwd=_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10.0)).decode().strip()
        host, port = line.rsplit(":", 1)
        async with RoomPlcClient(host, int(port), poll_interval_s=poll_s) as client:
            await client.wait_until(lambda s: s.link_ok, 5.0)
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, wall1 = time.process_time(), time.monotonic()
        return 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    finally:
        proc.terminate()
        await proc.wait()


def run() -> dict[str, float]:
    latencies = _latency_ms()
    fast_cpu = asyncio.run(_client_cpu_percent(0.0025, 5.0))
    slow_cpu = asyncio.run(_client_cpu_percent(0.02, 3.0))
    return {
        **{k: round(v, 3) for k, v in
           tail_figures("plc_input_to_client_event", "ms", latencies).items()},
        "plc_client_idle_cpu_percent": round(fast_cpu, 2),
        "plc_client_idle_cpu_percent_at_20ms_poll": round(slow_cpu, 2),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key} {value}")
