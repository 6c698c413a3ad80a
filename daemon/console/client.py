"""The console side of the MQTT API: sign a command, publish it, await the reply.

    async with ConsoleClient("mqtt://console1:pw@127.0.0.1:1883", "room1",
                             "alice", "alice.key", "console1") as c:
        print(await c.status())
        await c.confirm(pid)
        await c.hold(pid)          # heartbeats at 20 Hz until cancelled, then release

The broker account (URL user, default: the console id) identifies the
console machine to Mosquitto; the signing key identifies the person.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from joserfc.jwk import OKPKey
from pydantic import BaseModel, ValidationError

from daemon.console.keys import load_private_key
from daemon.console.schemas import (
    CONSOLE_ID_PATTERN,
    ReplyMessage,
    StateMessage,
    reply_topic,
    topic,
)
from daemon.console.server import NODELAY
from daemon.console.tokens import sign_command
from daemon.jsontypes import JsonMapping, JsonObject, JsonValue, as_object
from safety import strict_json

log = logging.getLogger(__name__)

PASSWORD_ENV = "IGRT_MQTT_PASSWORD"


# Proposal states during which a hold keeps the move going (RoomService's hold result).
ACTIVE_MOVE_STATES = frozenset({"CONFIRMED", "MOVING", "VERIFYING"})


def move_over(result: JsonMapping) -> bool:
    """Default end of a hold: the proposal left the active states (DONE, FAULT, ...)."""
    if result.get("done"):
        return True
    state = result.get("state")
    return state is not None and state not in ACTIVE_MOVE_STATES


def _result(reply: ReplyMessage) -> JsonObject:
    """The reply's result as a JSON object ({} when it carries none).

    The schema already holds it to an object with string keys (read strictly
    from JSON), so this only names that for mypy; it cannot fail on a reply
    that passed ReplyMessage.
    """
    return as_object(reply.result or {}, "result")


class ConsoleError(Exception):
    """Base of console-side failures; str() is the one-line message for the user."""


class CommandRefused(ConsoleError):
    def __init__(self, reply: ReplyMessage) -> None:
        super().__init__(f"{reply.cmd or 'command'} refused ({reply.code}): {reply.reason}")
        self.reply = reply
        self.code = reply.code
        self.reason = reply.reason


class ConsoleTimeout(ConsoleError):
    pass


class BrokerUnavailable(ConsoleError):
    pass


def parse_broker_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """mqtt://[user[:password]@]host[:port] or mqtts://... -> (host, port, user, password, tls)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConsoleError(f"broker URL {url!r}: scheme must be mqtt or mqtts")
    if not parts.hostname:
        raise ConsoleError(f"broker URL {url!r} has no host")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConsoleError(f"broker URL {url!r}: port is not a number 1-65535") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, tls


class ConsoleClient:
    def __init__(
        self,
        broker: str,
        room: str,
        user: str,
        key_path: str | Path | None,
        console_id: str | None = None,
        *,
        key: OKPKey | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        lifetime_s: float = 10.0,
        timeout_s: float = 5.0,
    ) -> None:
        host, port, url_user, url_password, want_tls = parse_broker_url(broker)
        self.host, self.port = host, port
        self.room = room
        self.user = user
        if key is None:
            if key_path is None:
                raise ConsoleError("a signing key is needed (--key)")
            key = load_private_key(key_path)
        self._key = key
        self.username = username or url_user or console_id
        if self.username is None:
            raise ConsoleError("no broker user: give one in the URL or a console id")
        self.console_id = console_id or self.username
        if not re.match(CONSOLE_ID_PATTERN, self.console_id):
            raise ConsoleError(
                f"console id {self.console_id!r} must be 1-64 of A-Z a-z 0-9 _ . -"
            )
        self._password = password or url_password or os.environ.get(PASSWORD_ENV)
        self._tls = tls if tls is not None else (ssl.create_default_context() if want_tls else None)
        self.lifetime_s = lifetime_s
        self.timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[ReplyMessage]] = {}
        self.state: StateMessage | None = None
        self._state_changed = asyncio.Event()

    # --- connection -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self._password,
            identifier=f"{self.console_id}-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            tls_context=self._tls,
            socket_options=[NODELAY],
            timeout=self.timeout_s,
        )
        try:
            await self._client.__aenter__()
            await self._client.subscribe(reply_topic(self.room, self.console_id), qos=1)
            await self._client.subscribe(topic(self.room, "state"), qos=1)
        except aiomqtt.MqttError as exc:
            self._client = None
            raise BrokerUnavailable(f"broker {self.host}:{self.port}: {exc}") from None
        self._reader = asyncio.create_task(self._read(self._client))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, aiomqtt.MqttError):
                pass
        if self._client is not None:
            try:
                await self._client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass
        self._client = None

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                raw = message.payload
                if not isinstance(raw, (bytes, bytearray)):
                    continue
                if message.topic.matches(topic(self.room, "state")):
                    self._on_state(bytes(raw))
                else:
                    self._on_reply(bytes(raw))
        except aiomqtt.MqttError as exc:
            err = BrokerUnavailable(f"lost the broker: {exc}")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)

    def _on_reply(self, raw: bytes) -> None:
        # Read strictly like every JSON from outside: the broker is shared.
        try:
            reply = ReplyMessage.model_validate(strict_json.loads(raw))
        except (strict_json.JsonInputError, ValidationError):
            log.warning("ignoring a reply that does not fit the schema")
            return
        fut = self._pending.get(reply.jti or "")
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def _on_state(self, raw: bytes) -> None:
        try:
            self.state = StateMessage.model_validate(strict_json.loads(raw))
        except (strict_json.JsonInputError, ValidationError):
            log.warning("ignoring a state message that does not fit the schema")
            return
        self._state_changed.set()

    async def wait_state(
        self, predicate: Callable[[JsonMapping], bool], timeout: float | None = None
    ) -> JsonMapping:
        """Wait until the retained/latest state satisfies predicate; returns it."""
        async with asyncio.timeout(timeout if timeout is not None else self.timeout_s):
            while True:
                if self.state is not None and predicate(self.state.state):
                    return self.state.state
                self._state_changed.clear()
                await self._state_changed.wait()

    # --- commands -------------------------------------------------------------

    def sign(
        self,
        cmd: str,
        args: JsonObject | None = None,
        *,
        jti: str | None = None,
        sub: str | None = None,
        aud: str | None = None,
        reply_to: str | None = None,
        lifetime_s: float | None = None,
        now: float | None = None,
        extra_claims: JsonObject | None = None,
    ) -> tuple[str, str]:
        """(jti, compact JWS) for cmd; the keyword arguments override this
        client's own (tests forge odd tokens with them), see sign_command."""
        jti = jti or uuid.uuid4().hex
        try:
            token = sign_command(
                self._key,
                cmd=cmd,
                sub=self.user if sub is None else sub,
                aud=self.room if aud is None else aud,
                reply_to=self.console_id if reply_to is None else reply_to,
                args=args,
                lifetime_s=self.lifetime_s if lifetime_s is None else lifetime_s,
                now=now,
                jti=jti,
                extra_claims=extra_claims,
            )
        except ValueError as exc:  # NaN/Infinity in the arguments: one line, nothing sent
            raise ConsoleError(str(exc)) from None
        return jti, token

    async def send_raw(self, payload: bytes | str, jti: str | None) -> asyncio.Future[ReplyMessage]:
        """Publish bytes on the command topic; the future resolves with the reply to jti."""
        if self._client is None:
            raise ConsoleError("not connected (use 'async with ConsoleClient(...)')")
        fut: asyncio.Future[ReplyMessage] = asyncio.get_running_loop().create_future()
        key = jti or uuid.uuid4().hex
        self._pending[key] = fut
        fut.add_done_callback(lambda _f: self._pending.pop(key, None))
        try:
            await self._client.publish(topic(self.room, "cmd"), payload, qos=1)
        except aiomqtt.MqttError as exc:
            fut.cancel()
            raise BrokerUnavailable(f"cannot publish command: {exc}") from None
        return fut

    async def request_raw(
        self, payload: bytes | str, jti: str | None, timeout: float | None = None
    ) -> ReplyMessage:
        fut = await self.send_raw(payload, jti)
        try:
            return await asyncio.wait_for(fut, timeout or self.timeout_s)
        except TimeoutError:
            raise ConsoleTimeout(
                f"no reply from igrtd in room {self.room!r} within {timeout or self.timeout_s:g} s"
            ) from None

    async def send(self, cmd: str, args: JsonObject | None = None) -> asyncio.Future[ReplyMessage]:
        jti, token = self.sign(cmd, args)
        return await self.send_raw(token, jti)

    async def command(
        self, cmd: str, args: JsonObject | None = None, *, timeout: float | None = None
    ) -> JsonObject:
        """Sign, publish, await the reply; returns its result or raises CommandRefused."""
        jti, token = self.sign(cmd, args)
        reply = await self.request_raw(token, jti, timeout)
        if not reply.ok:
            raise CommandRefused(reply)
        return _result(reply)

    async def call(self, cmd: str, **args: JsonValue) -> JsonObject:
        """One command, answered in the shape `daemon.control.ControlClient.call` gives:
        `{"ok": True, "result": {...}}` or `{"ok": False, "code": ..., "error": ...}`.

        The same client protocol over either transport, so igrtctl runs every
        room command the same way on the local socket and over MQTT.
        """
        jti, token = self.sign(cmd, args)
        reply = await self.request_raw(token, jti)
        if reply.ok:
            return {"ok": True, "result": _result(reply)}
        return {"ok": False, "code": reply.code, "error": reply.reason}

    async def status(self) -> JsonObject:
        return await self.command("status")

    async def interlocks(self) -> JsonObject:
        return await self.command("interlocks")

    async def propose(self, request: BaseModel | JsonObject) -> JsonObject:
        args = request.model_dump(mode="json") if isinstance(request, BaseModel) else request
        return await self.command("propose", args)

    async def confirm(self, proposal_id: str) -> JsonObject:
        return await self.command("confirm", {"proposal_id": proposal_id})

    async def approve(self, proposal_id: str) -> JsonObject:
        return await self.command("approve", {"proposal_id": proposal_id})

    async def release(self) -> JsonObject:
        return await self.command("release")

    async def stop(self, reason: str = "console stop") -> JsonObject:
        return await self.command("stop", {"reason": reason})

    async def reset(self) -> JsonObject:
        return await self.command("reset")

    async def hold(
        self,
        proposal_id: str,
        *,
        rate_hz: float = 20.0,
        on_reply: Callable[[ReplyMessage], None] | None = None,
        until: Callable[[JsonObject], bool] = move_over,
    ) -> JsonObject:
        """Hold-to-run: send `hold` heartbeats at rate_hz until cancelled, until a
        reply's result satisfies `until` (default: the move is over; that result
        is returned), a hold is refused (CommandRefused), or the daemon stops
        answering (ConsoleTimeout). Always sends `release` on the way out."""
        if rate_hz < 10.0:
            raise ValueError(f"hold rate {rate_hz:g} Hz is below the 10 Hz minimum")
        period = 1.0 / rate_hz
        loop = asyncio.get_running_loop()
        replies: list[ReplyMessage] = []
        last_answer = loop.time()
        outstanding: dict[str, float] = {}  # jti -> send time

        def collect(f: asyncio.Future[ReplyMessage]) -> None:
            nonlocal last_answer
            if f.cancelled() or f.exception() is not None:
                return
            reply = f.result()
            outstanding.pop(reply.jti or "", None)
            last_answer = loop.time()
            replies.append(reply)

        try:
            next_at = loop.time()
            while True:
                jti, token = self.sign("hold", {"proposal_id": proposal_id})
                fut = await self.send_raw(token, jti)
                outstanding[jti] = loop.time()
                fut.add_done_callback(collect)
                while replies:
                    reply = replies.pop(0)
                    if on_reply is not None:
                        on_reply(reply)
                    if not reply.ok:
                        raise CommandRefused(reply)
                    result = _result(reply)
                    if until(result):
                        return result
                if outstanding and loop.time() - max(last_answer, min(outstanding.values())) > self.timeout_s:
                    raise ConsoleTimeout(
                        f"igrtd stopped answering hold heartbeats for {self.timeout_s:g} s"
                    )
                next_at += period
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            # Runs on Ctrl-C / cancellation too: letting go must be said, not just implied.
            for jti in list(outstanding):
                fut_ = self._pending.get(jti)
                if fut_ is not None:
                    fut_.cancel()
            try:
                await asyncio.wait_for(self.release(), timeout=min(self.timeout_s, 2.0))
            except (ConsoleError, TimeoutError) as exc:
                log.warning("release after hold failed: %s", exc)

