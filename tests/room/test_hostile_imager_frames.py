"""Issue 11, item 11 (daemon/imager_link.py): bytes from the kV imaging system
cannot take igrtd down. A frame the decoder chokes on in any way (here: a
header nested far beyond the interpreter's recursion limit, and a decoder bug)
is reported as a rejection, that connection is dropped, and the link keeps
accepting the imaging system."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon import imager_link
from daemon.imager_link import ImagerLink
from drivers.kv_imager import FRAME_MAGIC, PREFIX


class Listener:
    def __init__(self) -> None:
        self.rejected: list[str] = []
        self.connections: list[tuple[bool, str]] = []

    def on_imager_frame(self, frame: Any, received_mono: float, received_unix: float) -> None:
        pass

    def on_imager_connection(self, connected: bool, detail: str) -> None:
        self.connections.append((connected, detail))

    def on_imager_rejected(self, error: str) -> None:
        self.rejected.append(error)


async def _until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def _send(path: Path, data: bytes) -> None:
    _reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()


async def _link(tmp_path: Path) -> tuple[ImagerLink, Listener]:
    link = ImagerLink(tmp_path / "kv.sock")
    listener = Listener()
    link.set_listener(listener)
    await link.start()
    return link, listener


async def test_a_frame_header_nested_30000_deep_is_rejected_and_the_link_goes_on(
    tmp_path: Path
) -> None:
    link, listener = await _link(tmp_path)
    try:
        header = b"[" * 30_000 + b"]" * 30_000  # under the 64 KiB header limit
        await _send(link.path, PREFIX.pack(FRAME_MAGIC, len(header), 0) + header)
        await _until(lambda: listener.rejected and not link.connected)
        assert link.frames_rejected == 1
        assert "nesting depth 30000 exceeds the limit" in listener.rejected[0]
        assert listener.connections[-1][0] is False
        await _send(link.path, b"")  # the imaging system reconnects
        await _until(lambda: len(listener.connections) >= 4)
        assert [c for c, _d in listener.connections] == [True, False, True, False]
    finally:
        await link.close()


async def test_any_decoder_failure_is_a_rejection_not_an_unhandled_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_read_frame(reader: asyncio.StreamReader) -> Any:
        await reader.readexactly(1)
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(imager_link, "read_frame", broken_read_frame)
    link, listener = await _link(tmp_path)
    try:
        await _send(link.path, b"x")
        await _until(lambda: bool(listener.rejected))
        assert "RuntimeError: decoder bug" in listener.rejected[0]
        assert "dropped after a bad message" in listener.connections[-1][1]
    finally:
        await link.close()
