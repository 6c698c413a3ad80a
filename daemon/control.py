"""Local control API: JSON lines over a Unix socket on the treatment-room host.

One request per line: {"cmd": "...", "user": "...", "args": {...}}; one reply
per line: {"ok": true, "result": {...}} or {"ok": false, "error": "...",
"code": "..."}. The socket file is created 0660 so that only members of the
daemon's group (the room console account) can reach it; the user's role comes
from the room configuration, never from the request. Consoles on the network
use the signed MQTT API instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from daemon.api import (
    ArmsRequest,
    Actor,
    CommandError,
    ImagingRequest,
    JogRequest,
    MonitorStartRequest,
    MonitorStopRequest,
    ProposeRequest,
    RegisterRequest,
    SessionRequest,
)
from daemon.config import RoomConfig

log = logging.getLogger("igrt.control")

MAX_REQUEST_BYTES = 1 << 20


def _one_line(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "request"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{loc}: {e['msg']}{more}"


async def dispatch(service: Any, config: RoomConfig, msg: Any, via: str = "local") -> dict[str, Any]:
    if not isinstance(msg, dict):
        return {"ok": False, "error": "request must be a JSON object", "code": "bad_request"}
    cmd, user, args = msg.get("cmd"), msg.get("user"), msg.get("args") or {}
    if not isinstance(cmd, str) or not isinstance(user, str) or not isinstance(args, dict):
        return {"ok": False, "error": "request needs string cmd and user, object args",
                "code": "bad_request"}
    role = config.role_of(user)
    if role is None:
        service.audit("reject", user, command=cmd, reason="unknown user", via=via)
        return {"ok": False, "error": f"unknown user {user!r}", "code": "forbidden"}
    actor = Actor(user=user, role=role, via=via)
    try:
        result = await _call(service, actor, cmd, args)
    except CommandError as exc:
        return {"ok": False, "error": exc.reason, "code": exc.code}
    except ValidationError as exc:
        return {"ok": False, "error": _one_line(exc), "code": "bad_request"}
    return {"ok": True, "result": result}


async def _call(service: Any, actor: Actor, cmd: str, args: dict[str, Any]) -> Any:
    def pid() -> str:
        v = args.get("proposal_id")
        if not isinstance(v, str):
            raise CommandError("proposal_id (string) is required", "bad_request")
        return v

    match cmd:
        case "status":
            return await service.status(actor)
        case "interlocks":
            return await service.interlocks(actor)
        case "open_session":
            return await service.open_session(actor, SessionRequest.model_validate(args))
        case "close_session":
            return await service.close_session(actor)
        case "record_imaging":
            return await service.record_imaging(actor, ImagingRequest.model_validate(args))
        case "propose":
            return await service.propose(actor, ProposeRequest.model_validate(args))
        case "register":
            return await service.register(actor, RegisterRequest.model_validate(args))
        case "confirm":
            return await service.confirm(actor, pid())
        case "approve":
            return await service.approve(actor, pid())
        case "hold":
            return await service.hold(actor, pid())
        case "release":
            return await service.release(actor)
        case "stop":
            return await service.stop(actor, str(args.get("reason", "")))
        case "reset":
            return await service.reset(actor)
        case "enter_service":
            return await service.enter_service(actor)
        case "exit_service":
            return await service.exit_service(actor)
        case "jog":
            return await service.jog(actor, JogRequest.model_validate(args))
        case "diag":
            return await service.diag(actor, bundle=bool(args.get("bundle", False)))
        case "monitor_start":
            return await service.monitor_start(actor, MonitorStartRequest.model_validate(args))
        case "monitor_stop":
            return await service.monitor_stop(actor, MonitorStopRequest.model_validate(args))
        case "monitor_status":
            return await service.monitor_status(actor)
        case "arms":
            return await service.arms(actor, ArmsRequest.model_validate(args))
        case _:
            raise CommandError(f"unknown command {cmd!r}", "bad_request")


class ControlServer:
    def __init__(self, service: Any, config: RoomConfig) -> None:
        self._service = service
        self._config = config
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self._config.control_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_socket():
            path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(path),
                                                       limit=MAX_REQUEST_BYTES)
        os.chmod(path, 0o660)
        log.info("control socket at %s", path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request too large",
                                               "code": "bad_request"})
                    break
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    reply = {"ok": False, "error": f"malformed JSON: {exc}", "code": "bad_request"}
                else:
                    reply = await dispatch(self._service, self._config, msg)
                await self._reply(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await writer.drain()


class ControlClient:
    """Blocking client for igrtctl and tests (one request at a time)."""

    def __init__(self, path: Path, user: str, timeout_s: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self.user = user

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self._file.write(json.dumps({"cmd": cmd, "user": self.user, "args": args}).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise ConnectionError("igrtd closed the control connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
