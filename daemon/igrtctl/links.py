"""The two ways igrtctl reaches igrtd, behind one client protocol.

`RoomLink.call(cmd, **args)` answers in one shape whichever transport carried
the command: a `Reply` read from `{"ok": true, "result": {...}}` or `{"ok":
false, "code": ..., "error": "<one line>"}` (the local socket's reply line;
`ConsoleClient.call` gives the same over MQTT). Transport failures become
`Unreachable`, a reply that is not of that shape `MalformedReply` (an
Unreachable: igrtd gave no usable answer), arguments that cannot be sent (a
NaN) `UsageError`, so the room commands in room.py never see a transport's own
exceptions.

`hold` is per transport because the transports differ in how heartbeats are
best sent: one request at a time on the local socket, pipelined over MQTT
(`ConsoleClient.hold`, which also releases on the way out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon.console.client import (
    BrokerUnavailable,
    CommandRefused,
    ConsoleClient,
    ConsoleError,
    ConsoleTimeout,
    move_over,
)
from daemon.console.keys import KeyFileError
from daemon.console.schemas import ReplyMessage
from daemon.control import FROM_ENVIRONMENT, ControlClient
from daemon.igrtctl.exits import Unreachable, UsageError
from daemon.jsontypes import JsonMapping, JsonObject, JsonValue, as_bool, as_object, as_str

# Hold progress: one hold result, only read.
Progress = Callable[[JsonMapping], None]


class MalformedReply(Unreachable):
    """igrtd answered, but not with a reply igrtctl can read: as good as no
    answer (exit UNREACHABLE); str() is the one line naming the command and field."""


@contextmanager
def reading(cmd: str) -> Iterator[None]:
    """Narrowing igrtd's answer to `cmd` (daemon.jsontypes): its ValueError
    becomes a MalformedReply, one line instead of a traceback."""
    try:
        yield
    except ValueError as exc:
        raise MalformedReply(f"igrtd answered {cmd} with a malformed reply: {exc}") from None


def _opt_str(value: object, field: str) -> str | None:
    return None if value is None else as_str(value, field)


@dataclass(frozen=True, slots=True)
class Reply:
    """igrtd's answer to one command, read: `result` when ok, else `code` and `error`."""

    ok: bool
    result: JsonObject
    code: str | None = None
    error: str | None = None

    @classmethod
    def read(cls, cmd: str, raw: object) -> Reply:
        """The reply line (or ConsoleClient.call's dict) as a Reply; MalformedReply otherwise."""
        with reading(cmd):
            obj = as_object(raw, "reply")
            if as_bool(obj.get("ok"), "ok"):
                return cls(True, as_object(obj.get("result"), "result"))
            return cls(False, {}, _opt_str(obj.get("code"), "code"),
                       _opt_str(obj.get("error"), "error"))


class Refused(Exception):
    """igrtd answered a command with ok: false; str() is the one line for the user."""

    def __init__(self, cmd: str, code: str | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{cmd} refused ({code}): {reason}")

    @classmethod
    def of(cls, cmd: str, reply: Reply) -> Refused:
        return cls(cmd, reply.code, reply.error)


class RoomLink(Protocol):
    user: str

    async def call(self, cmd: str, **args: JsonValue) -> Reply: ...

    async def hold(self, proposal_id: str, rate_hz: float, progress: Progress) -> JsonObject:
        """Heartbeats until the move is over (its last result), Refused when a
        hold is refused; on cancellation (Ctrl-C) release, then re-raise."""
        ...

    async def whoami(self) -> Reply: ...


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

    async def call(self, cmd: str, **args: JsonValue) -> Reply:
        # Checked here, before sending, because ControlClient raises ValueError both
        # for arguments it cannot send and for a reply it cannot read.
        try:
            json.dumps(args, allow_nan=False)
        except ValueError as exc:  # e.g. a NaN option: JSON for igrtd holds finite numbers only
            raise UsageError(f"{cmd}: cannot send these arguments: {exc}") from None
        try:
            raw: object = self.client.call(cmd, **args)
        except OSError as exc:  # the daemon went away or stopped answering mid-command
            raise Unreachable(f"igrtd at {self._path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # the reply line: not JSON, or not an object
            raise MalformedReply(f"igrtd answered {cmd} with a malformed reply: {exc}") from None
        return Reply.read(cmd, raw)

    async def hold(self, proposal_id: str, rate_hz: float, progress: Progress) -> JsonObject:
        period = 1.0 / rate_hz
        try:
            while True:
                reply = await self.call("hold", proposal_id=proposal_id)
                if not reply.ok:
                    raise Refused.of("hold", reply)
                result = reply.result
                progress(result)
                if move_over(result):
                    return result
                await asyncio.sleep(period)
        except BaseException:
            # Letting go must be said, not just implied: on Ctrl-C, and on a reply
            # igrtctl cannot read, igrtd hears `release` before igrtctl gives up
            # (as the MQTT client does); if igrtd cannot be reached either, its
            # heartbeat timeout stops the couch.
            with contextlib.suppress(Unreachable, UsageError):
                await self.call("release")
            raise

    async def whoami(self) -> Reply:
        try:
            raw: object = self.client.whoami()
        except OSError as exc:
            raise Unreachable(f"igrtd at {self._path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # the reply line: not JSON, or not an object
            raise MalformedReply(f"igrtd answered whoami with a malformed reply: {exc}") from None
        reply = Reply.read("whoami", raw)
        if reply.ok:
            reply.result["signing_as"] = self.user if self.client.signs else None
        return reply

    def close(self) -> None:
        self.client.close()


class MqttLink:
    """The MQTT console API (`ConsoleClient`, inside its `async with`): always signed."""

    def __init__(self, client: ConsoleClient) -> None:
        self.client = client
        self.user = client.user

    async def call(self, cmd: str, **args: JsonValue) -> Reply:
        try:
            return Reply.read(cmd, await self.client.call(cmd, **args))
        except (BrokerUnavailable, ConsoleTimeout) as exc:
            raise Unreachable(str(exc)) from None
        except ConsoleError as exc:  # nothing was sent (a NaN argument)
            raise UsageError(str(exc)) from None

    async def hold(self, proposal_id: str, rate_hz: float, progress: Progress) -> JsonObject:
        def each(reply: ReplyMessage) -> None:
            if reply.ok and reply.result:
                progress(reply.result)

        try:
            return await self.client.hold(proposal_id, rate_hz=rate_hz, on_reply=each)
        except CommandRefused as exc:
            raise Refused("hold", exc.code, exc.reason) from None
        except (BrokerUnavailable, ConsoleTimeout) as exc:
            raise Unreachable(str(exc)) from None

    async def whoami(self) -> Reply:
        raise UsageError("whoami is answered by the local socket only (igrtctl without --broker)")
