"""The two ways igrtctl reaches igrtd, behind one client protocol.

`RoomLink.call(cmd, **args)` answers in one shape whichever transport carried
the command: `{"ok": true, "result": {...}}` or `{"ok": false, "code": ...,
"error": "<one line>"}` (the local socket's reply line; `ConsoleClient.call`
gives the same over MQTT). Transport failures become `Unreachable`, arguments
that cannot be sent (a NaN) `UsageError`, so the room commands in room.py never
see a transport's own exceptions.

`hold` is per transport because the transports differ in how heartbeats are
best sent: one request at a time on the local socket, pipelined over MQTT
(`ConsoleClient.hold`, which also releases on the way out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from daemon.console.client import (
    BrokerUnavailable,
    CommandRefused,
    ConsoleClient,
    ConsoleError,
    ConsoleTimeout,
    move_over,
)
from daemon.console.keys import KeyFileError
from daemon.control import FROM_ENVIRONMENT, ControlClient
from daemon.igrtctl.exits import Unreachable, UsageError

Progress = Callable[[dict[str, Any]], None]


class Refused(Exception):
    """igrtd answered a command with ok: false; str() is the one line for the user."""

    def __init__(self, cmd: str, reply: dict[str, Any]) -> None:
        self.code = reply.get("code")
        self.reason = reply.get("error")
        super().__init__(f"{cmd} refused ({self.code}): {self.reason}")


class RoomLink(Protocol):
    user: str

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]: ...

    async def hold(self, proposal_id: str, rate_hz: float, progress: Progress) -> dict[str, Any]:
        """Heartbeats until the move is over (its last result), Refused when a
        hold is refused; on cancellation (Ctrl-C) release, then re-raise."""
        ...

    async def whoami(self) -> dict[str, Any]: ...


class LocalLink:
    """The local control socket (`ControlClient`): signed with a key, or the OS account."""

    def __init__(self, socket_path: Path, user: str, key: Path | None) -> None:
        self.user = user
        self._path = socket_path
        try:
            self.client = ControlClient(socket_path, user,
                                        key=FROM_ENVIRONMENT if key is None else key)
        except KeyFileError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise Unreachable(f"cannot reach igrtd at {socket_path}: {exc.strerror or exc}") from None

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return self.client.call(cmd, **args)
        except OSError as exc:  # the daemon went away or stopped answering mid-command
            raise Unreachable(f"igrtd at {self._path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # e.g. a NaN option: JSON for igrtd holds finite numbers only
            raise UsageError(f"{cmd}: cannot send these arguments: {exc}") from None

    async def hold(self, proposal_id: str, rate_hz: float, progress: Progress) -> dict[str, Any]:
        period = 1.0 / rate_hz
        try:
            while True:
                reply = await self.call("hold", proposal_id=proposal_id)
                if not reply["ok"]:
                    raise Refused("hold", reply)
                result: dict[str, Any] = reply["result"]
                progress(result)
                if move_over(result):
                    return result
                await asyncio.sleep(period)
        except asyncio.CancelledError:
            await self.call("release")  # letting go must be said, not just implied
            raise

    async def whoami(self) -> dict[str, Any]:
        try:
            reply = self.client.whoami()
        except OSError as exc:
            raise Unreachable(f"igrtd at {self._path}: {exc.strerror or exc}") from None
        if reply.get("ok"):
            reply["result"]["signing_as"] = self.user if self.client.signs else None
        return reply

    def close(self) -> None:
        self.client.close()


class MqttLink:
    """The MQTT console API (`ConsoleClient`, inside its `async with`): always signed."""

    def __init__(self, client: ConsoleClient) -> None:
        self.client = client
        self.user = client.user

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return await self.client.call(cmd, **args)
        except (BrokerUnavailable, ConsoleTimeout) as exc:
            raise Unreachable(str(exc)) from None
        except ConsoleError as exc:  # nothing was sent (a NaN argument)
            raise UsageError(str(exc)) from None

    async def hold(self, proposal_id: str, rate_hz: float, progress: Progress) -> dict[str, Any]:
        def each(reply: Any) -> None:
            if reply.ok and reply.result:
                progress(reply.result)

        try:
            return await self.client.hold(proposal_id, rate_hz=rate_hz, on_reply=each)
        except CommandRefused as exc:
            raise Refused("hold", {"code": exc.code, "error": exc.reason}) from None
        except (BrokerUnavailable, ConsoleTimeout) as exc:
            raise Unreachable(str(exc)) from None

    async def whoami(self) -> dict[str, Any]:
        raise UsageError("whoami is answered by the local socket only (igrtctl without --broker)")
