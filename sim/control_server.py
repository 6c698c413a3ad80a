"""The control API of a simulated room: a Unix socket in the room's run directory.

One JSON object per line in, one per line out (docs/sim-control-api.md):

    {"op": "inject", "args": {"fault": "estop"}}
    {"ok": true, "injected": {"fault": "estop"}}
    {"ok": false, "error": "one line"}

It can fault and move real devices, so it must never face a production room:
it serves only a `SimulatedRoom` that started from a room description and
wrote its marker into its own run directory (refused otherwise, before the
socket exists), and the socket is 0600 in a 0700 directory. Hostile input
(not JSON, NaN, deep nesting, a line past the limit, unknown ops) is
answered with one line; the connection stays usable except after an
over-long line, which cannot be resynchronised and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads
from sim.control_ops import OpError, run_op
from sim.room_handle import RoomHandle

log = logging.getLogger("igrt.sim.control")

MAX_LINE_BYTES = 64 * 1024
MAX_DEPTH = 8
MAX_CONNECTIONS = 16


class NotASimulatedRoom(RuntimeError):
    """The control API was asked to serve something the simulator did not create."""


def reply_line(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply, allow_nan=False, default=str) + "\n").encode()


def error_line(text: str) -> bytes:
    one = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))
    return reply_line({"ok": False, "error": one[:500]})


async def handle_line(room: RoomHandle, raw: bytes) -> bytes:
    """One request line -> one reply line; never raises for bad input."""
    try:
        msg = strict_loads(raw, max_depth=MAX_DEPTH, max_bytes=MAX_LINE_BYTES)
    except JsonInputError as exc:
        return error_line(f"bad request: {exc}")
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        return error_line('bad request: expected {"op": NAME, "args": {...}}')
    extra = set(msg) - {"op", "args"}
    if extra:
        return error_line(f"bad request: unknown keys {', '.join(sorted(map(str, extra)))}")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        return error_line(f"{msg['op'][:40]}: args must be a JSON object")
    try:
        result = await run_op(room, msg["op"], args)
        return reply_line({"ok": True, **result})
    except OpError as exc:
        return error_line(str(exc))
    except Exception as exc:  # a simulator bug answers one line; the server lives on
        log.exception("control op %s failed", msg["op"][:40])
        return error_line(f"{msg['op'][:40]}: internal error: {type(exc).__name__}: {exc}")


class ControlServer:
    def __init__(self, room: RoomHandle, path: Path) -> None:
        self.room = room
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if not isinstance(self.room, RoomHandle) or not self.room.created_by_simulator():
            raise NotASimulatedRoom(
                "the control API serves only a room the simulator created from a room "
                "description; refusing to start")
        if self.path.parent != self.room.run_dir:
            raise NotASimulatedRoom(f"control socket {self.path} must be in the room's run "
                                    f"directory {self.room.run_dir}")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE_BYTES)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CONNECTIONS:
            writer.write(error_line(f"too many connections (limit {MAX_CONNECTIONS})"))
            await _close(writer)
            return
        self._clients.add(task)
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():  # a last line without newline still gets its answer
                        writer.write(await handle_line(self.room, exc.partial))
                        await writer.drain()
                    break
                except asyncio.LimitOverrunError:
                    writer.write(error_line(
                        f"bad request: line longer than the limit of {MAX_LINE_BYTES} bytes"))
                    await writer.drain()
                    break
                if raw.strip():
                    writer.write(await handle_line(self.room, raw))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(task)
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def call(path: Path, op: str, args: dict[str, Any] | None = None,
         timeout_s: float = 60.0) -> dict[str, Any]:
    """A blocking client: one request, one reply (tests, scripts). The one client
    is igrtctl's (daemon/igrtctl/sim_control.py); this name stays for callers."""
    from daemon.igrtctl.sim_control import call as client_call

    return client_call(path, op, args, timeout_s=timeout_s)
