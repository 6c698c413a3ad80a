"""The simulated kV imager's `close` (unplugging the imaging system) ends even when
the other end has stopped reading: what it still holds is dropped after a bound,
not sent for ever (a test's teardown once waited 30 s on it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sim.kv_stream import CLOSE_FLUSH_S, SimKvImager


async def _close_against_a_peer_that_never_reads(sock: Path) -> tuple[float, bool]:
    async def never_read(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await asyncio.start_unix_server(never_read, str(sock))
    async with server:
        kv = SimKvImager(sock)
        await kv.connect()
        try:  # far more than the socket holds: the rest stays in the link's buffer
            await asyncio.wait_for(kv.send_raw(b"\0" * (16 << 20)), 0.5)
        except TimeoutError:
            pass
        t0 = time.monotonic()
        await kv.close()
        return time.monotonic() - t0, kv.connected


def test_close_ends_within_its_bound_when_the_peer_has_stopped_reading(tmp_path: Path) -> None:
    elapsed, connected = asyncio.run(_close_against_a_peer_that_never_reads(tmp_path / "kv.sock"))
    assert not connected
    assert elapsed < CLOSE_FLUSH_S + 1.0, elapsed


async def _cancel_while_stopping_a_stream() -> bool:
    kv = SimKvImager("/nonexistent")

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # a render finishing, a frame going out
            raise

    kv._stream_task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(kv._stop_stream())  # the command reader, on "stop"
    await asyncio.sleep(0.05)
    stopper.cancel()  # close() cancelling the command reader meanwhile
    try:
        await stopper
    except asyncio.CancelledError:
        return True
    return False


def test_a_cancel_of_the_command_reader_while_it_stops_a_stream_is_not_swallowed() -> None:
    """Swallowed, the reader went on waiting for igrtd's next command, and `close`
    waited on it until a teardown's 30 s ran out."""
    assert asyncio.run(_cancel_while_stopping_a_stream())
