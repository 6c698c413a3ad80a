"""The kV imaging system's link to igrtd: a Unix stream socket carrying frames in
and acquisition commands out (wire protocol: drivers/kv_imager.py).

No policy: the link hands every valid frame to its listener with the moments
it was received (monotonic and UNIX clocks, read together), reports
connections coming and going, and reports bad bytes. What a frame means, and
what a lost link means for the beam, is RoomService's business.

One imaging system at a time: a second connection while one is open is
refused (logged, reported, closed), so two sources can never interleave.
A message that breaks the protocol is logged as one line, reported, and the
connection is closed (after bad bytes the framing cannot be trusted). Every
other exception while reading or handing over a frame (a decoder bug met by
hostile bytes) is treated the same way: reported as a rejection, the
connection dropped, igrtd goes on; no frame can take the daemon down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from daemon.jsontypes import JsonObject
from drivers.kv_imager import KvProtocolError, WireFrame, encode_command, read_frame

log = logging.getLogger("igrt.imager")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""


class ImagerListener(Protocol):
    def on_imager_frame(self, frame: WireFrame, received_mono: float,
                        received_unix: float) -> None: ...
    def on_imager_connection(self, connected: bool, detail: str) -> None: ...
    def on_imager_rejected(self, error: str) -> None: ...


class ImagerLink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener: ImagerListener | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn_seq = 0
        self.frames_received = 0
        self.frames_rejected = 0
        self.connections = 0
        self.last_error: str | None = None
        self.last_frame_mono: float | None = None
        self._recent: list[float] = []  # receive times of the last frames, for the rate

    def set_listener(self, listener: ImagerListener) -> None:
        self._listener = listener

    @property
    def connected(self) -> bool:
        return self._writer is not None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_socket():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path),
                                                       limit=4 * 1024 * 1024)
        os.chmod(self.path, 0o660)
        log.info("kV imaging link at %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -------------------------------------------------------------- commands
    async def request_acquisition(self, rate_hz: float) -> bool:
        """Ask the connected imaging system to stream at `rate_hz`; False if none is connected."""
        return await self._send(encode_command("acquire", rate_hz))

    async def stop_acquisition(self) -> bool:
        return await self._send(encode_command("stop"))

    async def _send(self, data: bytes) -> bool:
        w = self._writer
        if w is None:
            return False
        try:
            w.write(data)
            await asyncio.wait_for(w.drain(), 1.0)
        except (OSError, TimeoutError) as exc:
            log.error("kV imaging link: command not sent: %s", exc)
            return False
        return True

    def describe(self) -> JsonObject:
        now = time.monotonic()
        rate = None
        if len(self._recent) >= 2 and now - self._recent[-1] < 1.0:
            rate = round((len(self._recent) - 1) / (self._recent[-1] - self._recent[0]), 2)
        return {
            "socket": str(self.path),
            "connected": self.connected,
            "connections": self.connections,
            "frames_received": self.frames_received,
            "frames_rejected": self.frames_rejected,
            "frame_rate_hz": rate,
            "last_frame_age_s": None if self.last_frame_mono is None
            else round(now - self.last_frame_mono, 3),
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------ connection
    def _notify(self, method: str, *args: object) -> None:
        if self._listener is None:
            return
        try:
            getattr(self._listener, method)(*args)
        except Exception:  # the listener's bug must not take the link down silently
            log.exception("kV imaging link listener %s failed", method)

    def _reject(self, error: str) -> None:
        self.frames_rejected += 1
        self.last_error = error
        log.error("kV imaging link: %s", error)
        self._notify("on_imager_rejected", error)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._reject("second imaging system connection refused (one is already connected)")
            writer.close()
            return
        self._writer = writer
        self._conn_seq += 1
        self.connections += 1
        self._recent.clear()
        self._notify("on_imager_connection", True, f"connection {self._conn_seq}")
        detail = "closed by the imaging system"
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                t_mono, t_unix = time.monotonic(), time.time()
                self.frames_received += 1
                self.last_frame_mono = t_mono
                self._recent = [*self._recent[-19:], t_mono]
                self._notify("on_imager_frame", frame, t_mono, t_unix)
        except KvProtocolError as exc:
            self._reject(str(exc))
            detail = f"dropped after a bad message: {exc}"
        except (ConnectionError, OSError) as exc:
            detail = f"connection error: {exc}"
        except asyncio.CancelledError:
            detail = "igrtd stopping"
            raise
        except Exception as exc:  # hostile bytes must not reach the event loop
            error = f"unexpected error reading a frame: {type(exc).__name__}: {_first_line(exc)}"
            log.exception("kV imaging link: frame handling failed")
            self._reject(error)
            detail = f"dropped after a bad message: {error}"
        finally:
            self._writer = None
            writer.close()
            self._notify("on_imager_connection", False, detail)
