"""igrtd's and the simulators' event loop (drivers/event_loop.py): epoll for the
descriptors, select(2) for a short wait so that a timer is not rounded up to the
next millisecond. What it must keep doing is what any asyncio loop does."""

from __future__ import annotations

import asyncio
import socket
import time

from drivers.event_loop import PRECISE_BELOW_S, PreciseEpollSelector, precise_event_loop


def test_a_short_wait_with_nothing_ready_returns_no_events_after_the_timeout() -> None:
    with PreciseEpollSelector() as sel:
        a, b = socket.socketpair()
        with a, b:
            sel.register(a, 1)  # EVENT_READ; nothing written yet
            t0 = time.monotonic()
            assert sel.select(0.002) == []
            assert time.monotonic() - t0 >= 0.002


def test_a_short_wait_reports_a_descriptor_that_becomes_readable() -> None:
    with PreciseEpollSelector() as sel:
        a, b = socket.socketpair()
        with a, b:
            key = sel.register(a, 1)
            b.send(b"x")
            events = sel.select(PRECISE_BELOW_S / 2)
            assert [(k.fileobj, mask) for k, mask in events] == [(key.fileobj, 1)]


def test_long_and_unbounded_waits_are_plain_epoll_waits() -> None:
    with PreciseEpollSelector() as sel:
        a, b = socket.socketpair()
        with a, b:
            sel.register(a, 1)
            b.send(b"x")
            assert len(sel.select(PRECISE_BELOW_S * 2)) == 1
            assert len(sel.select(None)) == 1
            assert len(sel.select(0)) == 1


def test_the_loop_runs_timers_in_order_and_does_socket_io() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        done = loop.create_future()
        loop.call_later(0.0006, order.append, "second")
        loop.call_later(0.0003, order.append, "first")
        loop.call_later(0.001, done.set_result, None)
        await done
        reader, writer = await asyncio.open_connection(sock=server_side)
        peer.sendall(b"ping\n")
        order.append((await reader.readline()).decode().strip())
        writer.close()
        return order

    server_side, peer = socket.socketpair()
    with peer, asyncio.Runner(loop_factory=precise_event_loop) as runner:
        assert runner.run(main()) == ["first", "second", "ping"]


def test_a_timer_is_never_run_before_it_is_due() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        due = loop.time() + 0.0004
        loop.call_at(due, lambda: fired.set_result(loop.time()))
        return await fired - due

    with asyncio.Runner(loop_factory=precise_event_loop) as runner:
        for _ in range(20):
            assert runner.run(main()) >= 0.0


def _timer_slack_ns() -> int:
    """This thread's timer slack: prctl(2) PR_GET_TIMERSLACK."""
    import ctypes
    return int(ctypes.CDLL(None).prctl(30, 0, 0, 0, 0))


def test_the_thread_that_runs_the_loop_waits_with_a_timer_slack_of_1_ns() -> None:
    import threading

    seen: list[int] = []

    def run() -> None:
        loop = precise_event_loop()
        try:
            loop.run_until_complete(asyncio.sleep(0.001))
            seen.append(_timer_slack_ns())
        finally:
            loop.close()

    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert seen == [1]
