"""The sd_notify readiness/watchdog protocol, against our own NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import sdnotify


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_sends_ready_with_status(manager: socket.socket) -> None:
    assert sdnotify.ready("couch and PLC connected")
    assert received(manager) == "READY=1\nSTATUS=couch and PLC connected"


def test_watchdog_sends_keepalive(manager: socket.socket) -> None:
    assert sdnotify.watchdog()
    assert received(manager) == "WATCHDOG=1"


def test_status_is_flattened_to_one_line(manager: socket.socket) -> None:
    sdnotify.status("fault:\ncouch link lost")
    assert received(manager) == "STATUS=fault: couch link lost"


def test_stopping_and_extend_timeout(manager: socket.socket) -> None:
    sdnotify.stopping()
    sdnotify.extend_timeout(1.5)
    assert received(manager) == "STOPPING=1"
    assert received(manager) == "EXTEND_TIMEOUT_USEC=1500000"


def test_abstract_namespace_socket_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"igrt-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert received(sock) == "READY=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    assert not sdnotify.watchdog()


def test_unreachable_socket_returns_false_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sdnotify.watchdog()


def test_watchdog_interval_comes_from_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 10.0


def test_watchdog_meant_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval_s() is None


@pytest.mark.parametrize("value", ["", "0", "-5", "ten"])
def test_absent_or_invalid_watchdog_usec_disables_watchdog(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", value)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() is None


async def test_feed_watchdog_pings_at_half_interval_while_healthy(
    manager: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: ping every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    manager.setblocking(False)
    task = asyncio.create_task(sdnotify.feed_watchdog(lambda: True))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = []
    while True:
        try:
            pings.append(received(manager))
        except BlockingIOError:
            break
    assert len(pings) >= 2 and set(pings) == {"WATCHDOG=1"}


async def test_feed_watchdog_withholds_pings_when_unhealthy(
    manager: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    manager.setblocking(False)
    task = asyncio.create_task(sdnotify.feed_watchdog(lambda: False))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(BlockingIOError):
        manager.recv(4096)


async def test_feed_watchdog_returns_at_once_without_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sdnotify.feed_watchdog(), timeout=1.0)
