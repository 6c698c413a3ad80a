"""The daemon side of the MQTT console API.

`MqttConsole` keeps one broker connection for a room (reconnecting with
back-off), verifies every message on `igrt/{room}/cmd` with a
`CommandVerifier`, runs the command through the registry's dispatcher
(`daemon.commands.execute`, shared with the local socket) as the registered
user, and answers on `igrt/{room}/reply/{console}` with a result or a code of
`daemon.errors.ErrorCode`. It publishes
the retained state snapshot, rate-limited telemetry, events, and presence
(`online`, with `offline` as the broker-held last will).

Why commands run as tasks: a `stop` must never wait behind a slow command,
so stop runs at once; other commands run in arrival order per console (a
`release` must not overtake the `hold` sent before it), concurrently across
consoles, with a cap on how many are in flight.

Losing the broker is reported through `on_link_change(False)`: with the link
gone hold-to-run heartbeats cannot arrive, so the daemon stops any move
rather than wait for the heartbeat timeout.

No single message can take igrtd down: handling one message never raises.
A message the verifier refuses is audited and answered; anything unexpected
while handling it (a library bug met by a hostile payload) is audited as a
rejection with code `internal`, answered when the reply topic is known, and
the loop goes on. Tasks the console starts are guarded the same way, and an
unexpected error in the connection itself reconnects like a broker loss.

Review images of a registration (`publish_review`) are nine messages of about
130 KB: encoded in the registration worker, they are only sent from here, one
at a time, each awaited, so the loop is never held for the whole megabyte.

A command carrying the MQTT retain flag is refused before it is parsed (code
`retained`): a retained message is a stored one, replayed by the broker to
every new subscriber, never a person's live request. Mosquitto cannot forbid
retain on one topic, so igrtd also clears the retained message it found
(an empty retained publish on the command topic, which its ACL allows).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.api import Actor, RoomCommands
from daemon.commands import COMMANDS, CommandListeners, execute
from daemon.console.schemas import (
    EventMessage,
    ReplyMessage,
    StateMessage,
    StatusMessage,
    TelemetryMessage,
    dumps,
    reply_topic,
    review_topic,
    topic,
)
from daemon.console.tokens import CommandRejected, CommandVerifier, VerifiedCommand
from daemon.errors import ErrorCode
from daemon.jsontypes import JsonMapping
from imaging.review_messages import ReviewMessages

log = logging.getLogger(__name__)

# Audit details are read only: any JSON-like mapping (ErrorCode values included).
AuditFn = Callable[[str, str, JsonMapping], None]
# A task the console runs; it only ever awaits, so nothing is sent into it.
_Job = Coroutine[object, None, None]

# Without TCP_NODELAY, Nagle + delayed ACK stall small request/reply
# exchanges over loopback by tens of milliseconds.
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

# An upper bound of what a PUBLISH packet adds to topic and payload: fixed header
# (1 + up to 4 bytes of remaining length), topic length (2), packet id (2),
# properties length (1, no properties).
_PUBLISH_OVERHEAD = 10
# Sends of one review begun before it is given up: one more after the link broke
# under it, not a reconnect loop should the review itself be what breaks the link
# (a broker that announces no packet limit but enforces one).
_REVIEW_TRIES = 2


class _Lane:
    """Commands of one user at one console, run one at a time in arrival order."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _one_line(exc: BaseException) -> str:
    """`Type: message`, first line, bounded: audit text, never a traceback."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


def _log_audit(event: str, actor: str, details: JsonMapping) -> None:
    level = logging.WARNING if event.endswith("rejected") else logging.INFO
    log.log(level, "audit %s actor=%s %s", event, actor, details)


HoldPublications = Callable[[], Callable[[], None]]


def _release_nothing() -> None:
    return None


def _hold_nothing() -> Callable[[], None]:
    return _release_nothing


class MqttConsole:
    def __init__(
        self,
        room_commands: RoomCommands,
        verifier: CommandVerifier,
        *,
        broker_host: str,
        broker_port: int = 1883,
        room: str,
        username: str,
        password: str | None,
        tls: ssl.SSLContext | None = None,
        audit: AuditFn = _log_audit,
        state_provider: Callable[[], JsonMapping | None] | None = None,
        on_link_change: Callable[[bool], None] | None = None,
        telemetry_max_hz: float = 20.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        keepalive_s: int = 5,
        max_inflight_commands: int = 32,
        client_id: str | None = None,
        listeners: CommandListeners | None = None,
        hold_publications: HoldPublications | None = None,
    ) -> None:
        if verifier.room != room:
            raise ValueError(f"verifier is for room {verifier.room!r}, console for {room!r}")
        self.commands = room_commands
        self._listeners = listeners
        # Held from a motion command's verification until its answer
        # (daemon/publications.py); nothing held without it.
        self._hold_publications = hold_publications or _hold_nothing
        self.verifier = verifier
        self.room = room
        self._host = broker_host
        self._port = broker_port
        self._username = username
        self._password = password
        self._tls = tls
        self._audit_fn = audit
        self._state_provider = state_provider
        self._on_link_change = on_link_change
        self._telemetry_period = 1.0 / telemetry_max_hz
        self._reconnect_min = reconnect_min_s
        self._reconnect_max = reconnect_max_s
        self._keepalive = keepalive_s
        self._max_inflight = max_inflight_commands
        self._client_id = client_id or f"igrtd-{room}"

        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._last_state: JsonMapping | None = None
        self._seq = {"state": 0, "telemetry": 0, "event": 0}
        self._telemetry_last = 0.0
        self._telemetry_pending: JsonMapping | None = None
        self._telemetry_flush_scheduled = False
        self._console_locks: dict[str, _Lane] = {}
        self._inflight = 0
        self.connections = 0  # successful connects, for tests and diagnostics
        # The broker's Maximum Packet Size (MQTT 5 CONNACK), None when it sets none.
        self.broker_max_packet: int | None = None
        # The latest review, and the one whose messages need no more sending (all
        # with the broker, or too large for it): a review the link lost half-way is
        # sent again after the next connect.
        self._review: ReviewMessages | None = None
        self._review_done: ReviewMessages | None = None
        self._review_tries = 0  # of the latest review: sends begun
        self._review_turn = asyncio.Lock()

    # --- topics -------------------------------------------------------------

    @property
    def cmd_topic(self) -> str:
        return topic(self.room, "cmd")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # --- connection ---------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled, reconnecting with exponential back-off."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                await self._connection_loop()
            finally:
                self._tg = None

    async def _connection_loop(self) -> None:
        backoff = self._reconnect_min
        while True:
            try:
                client = aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password,
                    identifier=self._client_id,
                    # MQTT 5: only its subscription options show igrtd the retain
                    # flag of a live message (retain as published), see _on_connected.
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=True,  # nothing queued while away is delivered later
                    keepalive=self._keepalive,
                    tls_context=self._tls,
                    will=aiomqtt.Will(
                        topic(self.room, "status"),
                        dumps(StatusMessage(room=self.room, status="offline")),
                        qos=1,
                        retain=True,
                    ),
                    socket_options=[NODELAY],
                    timeout=5,
                )
                self._watch_connack(client)
                async with client:
                    await self._on_connected(client)
                    backoff = self._reconnect_min
                    try:
                        async for message in client.messages:
                            if message.topic.matches(self.cmd_topic):
                                self._on_message(message)
                    except asyncio.CancelledError:
                        # A clean disconnect does not fire the last will, so say it ourselves.
                        await self._say_offline(client)
                        raise
            except aiomqtt.MqttError as exc:
                log.warning("MQTT broker %s:%s: %s", self._host, self._port, exc)
            except Exception as exc:  # a bug here must not end the console link
                # Handled like a broker loss: the link-down callback stops a
                # console-held move, then the loop reconnects.
                log.exception("console link failed unexpectedly")
                self._audit("console.fault", "system", {
                    "what": "MQTT console link", "reason": _one_line(exc), "action": "reconnect"})
            finally:
                self._client = None
                if self._connected.is_set():
                    self._connected.clear()
                    self._link_changed(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._reconnect_max)

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        # retainAsPublished: a command published with the retain flag arrives
        # with it, live or replayed, so it can be refused either way (MQTT
        # 3.1.1 clears the flag on live delivery). noLocal: igrtd's own empty
        # publish that clears a retained command does not come back to it.
        await client.subscribe(
            self.cmd_topic,
            options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True),
        )
        await client.publish(
            topic(self.room, "status"),
            dumps(StatusMessage(room=self.room, status="online")),
            qos=1,
            retain=True,
        )
        snapshot = self._state_provider() if self._state_provider else self._last_state
        if snapshot is not None:
            self._last_state = snapshot
            await self._publish_state_now(client, snapshot)
        self._client = client
        self.connections += 1
        self._connected.set()
        log.info("console API connected to %s:%s (room %s)", self._host, self._port, self.room)
        self._link_changed(True)
        review = self._review
        if (review is not None and review is not self._review_done
                and self._review_tries < _REVIEW_TRIES):
            self._spawn(self._resend_review(review), "review images")

    def _watch_connack(self, client: aiomqtt.Client) -> None:
        """Note the Maximum Packet Size the broker announces when it accepts igrtd.

        Mosquitto drops a client that sends a larger packet, and with igrtd's link
        every console's hold-to-run: a review image too large for the broker must be
        left unsent, not sent. aiomqtt does not pass the CONNACK properties on, so
        its paho client's connect callback is wrapped; should that ever be missing,
        the limit stays unknown and the review goes out as the contract says.
        """
        self.broker_max_packet = None
        paho = getattr(client, "_client", None)
        inner = getattr(paho, "on_connect", None)
        if paho is None or inner is None:
            log.warning("cannot read the broker's maximum packet size (aiomqtt changed?)")
            return

        def on_connect(c: object, userdata: object, flags: object, reason_code: object,
                       properties: object = None) -> None:
            size = getattr(properties, "MaximumPacketSize", None)
            self.broker_max_packet = size if isinstance(size, int) and size > 0 else None
            inner(c, userdata, flags, reason_code, properties)

        paho.on_connect = on_connect

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        try:
            await asyncio.wait_for(
                client.publish(
                    topic(self.room, "status"),
                    dumps(StatusMessage(room=self.room, status="offline")),
                    qos=1,
                    retain=True,
                ),
                timeout=1.0,
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not publish offline status: %s", exc)

    def _link_changed(self, up: bool) -> None:
        if self._on_link_change is None:
            return
        try:
            self._on_link_change(up)
        except Exception:  # a faulty callback must not take the console link down with it
            log.exception("on_link_change(%s) failed", up)

    # --- outbound -----------------------------------------------------------

    async def _publish(self, t: str, payload: bytes, *, qos: int, retain: bool = False) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(t, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            log.warning("publish to %s failed: %s", t, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a failed publish is reported, never fatal
            log.error("publish to %s failed unexpectedly: %s", t, _one_line(exc))
            return False
        return True

    def _spawn(self, coro: _Job, what: str) -> None:
        """Run `coro` in the console's task group, guarded: an exception in one
        task would otherwise cancel the whole group and end the console."""
        if self._tg is None:
            coro.close()
            return
        self._tg.create_task(self._guarded(coro, what))

    async def _guarded(self, coro: _Job, what: str) -> None:
        try:
            await coro
        except Exception as exc:  # see _spawn
            log.exception("console task %s failed", what)
            self._audit("console.fault", "system", {"what": what, "reason": _one_line(exc)})

    async def publish_state(self, snapshot: JsonMapping) -> bool:
        """Retained full state; remembered and republished after a reconnect."""
        self._last_state = snapshot
        client = self._client
        if client is None:
            return False
        return await self._publish_state_now(client, snapshot)

    async def _publish_state_now(self, client: aiomqtt.Client, snapshot: JsonMapping) -> bool:
        self._seq["state"] += 1
        msg = StateMessage(room=self.room, seq=self._seq["state"], ts=time.time(), state=snapshot)
        try:
            await client.publish(topic(self.room, "state"), dumps(msg), qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            log.warning("state publish failed: %s", exc)
            return False
        return True

    async def publish_event(
        self, event: str, actor: str | None = None, details: JsonMapping | None = None
    ) -> bool:
        self._seq["event"] += 1
        msg = EventMessage(
            room=self.room,
            seq=self._seq["event"],
            ts=time.time(),
            event=event,
            actor=actor,
            details=details or {},
        )
        return await self._publish(topic(self.room, "events"), dumps(msg), qos=1)

    async def publish_review(self, review: ReviewMessages) -> bool:
        """Retained, QoS 1: the review images of a registration (docs/console-api.md,
        "Review images"). The nine images first, the meta last: a page that reads a
        meta finds its images already there (each names its registration_id). True
        when all reached the broker; otherwise the latest review is sent again after
        the next connect, unless the broker's packet limit refuses it."""
        self._review = review
        self._review_tries = 0
        return await self._send_review(review)

    async def _resend_review(self, review: ReviewMessages) -> None:
        await self._send_review(review)

    async def _send_review(self, review: ReviewMessages) -> bool:
        # One review at a time, so two registrations' images never interleave.
        async with self._review_turn:
            if review is not self._review:
                return False  # a newer registration's review follows
            if self._client is None:
                return False  # sent after the next connect
            topics = [(review_topic(self.room, i.plane, i.image), i.payload)
                      for i in review.images]
            topics.append((review_topic(self.room), review.meta))
            limit = self.broker_max_packet
            largest = max(len(t) + len(p) for t, p in topics) + _PUBLISH_OVERHEAD
            if limit is not None and largest > limit:
                self._review_done = review  # it would not fit after a reconnect either
                log.error("review images of registration %s not published: a message of "
                          "%d bytes exceeds the broker's max_packet_size %d (see "
                          "systemd/mosquitto/mosquitto.conf)", review.registration_id,
                          largest, limit)
                self._audit("console.review_not_published", "system", {
                    "registration_id": review.registration_id, "bytes": largest,
                    "broker_max_packet": limit})
                return False
            self._review_tries += 1
            for t, payload in topics:
                if review is not self._review:
                    return False  # superseded half-way: the newer review replaces these
                # Awaited one by one (QoS 1: until the broker has it): the loop runs
                # everything else between them.
                if not await self._publish(t, payload, qos=1, retain=True):
                    return False
            self._review_done = review
            log.info("review images of registration %s published (%d bytes)",
                     review.registration_id, review.total_bytes)
            return True

    async def publish_telemetry(self, data: JsonMapping) -> None:
        """Latest-wins, at most telemetry_max_hz: a burst is coalesced and the
        newest sample is sent at the next slot, so the last pose is never lost."""
        self._telemetry_pending = data
        wait = self._telemetry_last + self._telemetry_period - time.monotonic()
        if wait <= 0:
            await self._flush_telemetry()
        elif not self._telemetry_flush_scheduled and self._tg is not None:
            self._telemetry_flush_scheduled = True
            self._spawn(self._flush_telemetry_later(wait), "telemetry")

    async def _flush_telemetry_later(self, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
        finally:
            self._telemetry_flush_scheduled = False
        await self._flush_telemetry()

    async def _flush_telemetry(self) -> None:
        data, self._telemetry_pending = self._telemetry_pending, None
        if data is None:
            return
        self._telemetry_last = time.monotonic()
        self._seq["telemetry"] += 1
        header: JsonMapping = {"room": self.room, "seq": self._seq["telemetry"], "ts": time.time()}
        try:
            clash = header.keys() & data.keys()
            if clash:  # the sample may not name the header fields (as keyword arguments could not)
                raise TypeError(f"sample sets {', '.join(sorted(clash))}")
            msg = TelemetryMessage.model_validate({**data, **header})
        except (TypeError, ValueError) as exc:
            log.error("telemetry sample dropped, does not fit the schema: %s", exc)
            return
        await self._publish(topic(self.room, "telemetry"), dumps(msg), qos=0)

    # --- inbound commands ---------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        """One message from the command topic. Never raises (see module doc)."""
        try:
            payload = message.payload
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"payload of type {type(payload).__name__}")
            if message.retain:
                self._refuse_retained(message.topic.value, bytes(payload))
                return
            self._on_command(bytes(payload))
        except Exception as exc:  # one message must never end the loop
            log.exception("console command handling failed unexpectedly")
            self._audit("console.command_rejected", "unverified:?", {
                "code": ErrorCode.INTERNAL, "reason": f"internal error while handling a command: "
                f"{_one_line(exc)}; not run", "cmd": None, "jti": None, "console": None,
                "claimed_user": None})

    def _refuse_retained(self, topic_name: str, payload: bytes) -> None:
        """Refused unread: nothing in a stored message is parsed or trusted."""
        if not payload:
            return  # an empty retained message only deletes one; nothing to refuse
        self._audit("console.command_rejected", "unverified:?", {
            "code": ErrorCode.RETAINED,
            "reason": "command carried the MQTT retain flag (a stored message replayed by the "
                      "broker, not a live request); not run, retained copy cleared",
            "bytes": len(payload), "cmd": None, "jti": None, "console": None,
            "claimed_user": None})
        self._spawn(self._clear_retained(topic_name), "clear retained command")

    async def _clear_retained(self, topic_name: str) -> None:
        if not await self._publish(topic_name, b"", qos=1, retain=True):
            log.warning("could not clear the retained command on %s", topic_name)
            return
        self._audit("console.retained_cleared", "system", {"topic": topic_name})

    def _on_command(self, payload: bytes) -> None:
        """Verify inline (cheap, keeps arrival order), execute as a task."""
        try:
            vc = self.verifier.verify(payload)
        except CommandRejected as rej:
            self._reject(rej)
            return
        try:
            self._dispatch(vc)
        except Exception as exc:  # answered and audited, the loop goes on
            log.exception("console command %s could not be started", vc.cmd)
            self._reject(CommandRejected(
                ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}; not run",
                reply_to=vc.claims.reply_to, sub=vc.user.user, jti=vc.claims.jti, cmd=vc.cmd))

    def _dispatch(self, vc: VerifiedCommand) -> None:
        command = COMMANDS[vc.cmd]  # the verifier accepts registered commands only
        release = self._hold_publications() if command.moves else _release_nothing
        if not command.heartbeat:  # heartbeats at 20 Hz would drown the audit trail
            self._audit(
                "console.command_verified",
                vc.user.user,
                {"cmd": vc.cmd, "jti": vc.claims.jti, "console": vc.claims.reply_to,
                 **({"accepted_outside_time_window": vc.time_note} if vc.time_note else {})},
            )
        if command.immediate:
            self._spawn(self._execute(vc, release), vc.cmd)
            return
        if self._inflight >= self._max_inflight:
            release()
            self._spawn(
                self._reply(vc.claims.reply_to, ReplyMessage(
                    room=self.room, jti=vc.claims.jti, cmd=vc.cmd, ok=False, code=ErrorCode.BUSY,
                    reason=f"{self._inflight} commands in progress; try again", ts=time.time(),
                )),
                "reply",
            )
            return
        self._inflight += 1
        self._spawn(self._execute_in_order(vc, release), vc.cmd)

    def _reject(self, rej: CommandRejected) -> None:
        details = {
            "code": rej.code,
            "reason": rej.reason,
            "cmd": rej.cmd,
            "jti": rej.jti,
            "console": rej.reply_to,
            "claimed_user": rej.sub,
        }
        # Claimed, not authenticated: the actor is recorded as such.
        self._audit("console.command_rejected", f"unverified:{rej.sub or '?'}", details)
        if rej.reply_to is not None:
            msg = ReplyMessage(
                room=self.room, jti=rej.jti, cmd=rej.cmd, ok=False, code=rej.code,
                reason=rej.reason, ts=time.time(),
            )
            self._spawn(self._reply(rej.reply_to, msg), "reply")

    async def _execute_in_order(self, vc: VerifiedCommand,
                                release: Callable[[], None] = _release_nothing) -> None:
        key = f"{vc.user.user}@{vc.claims.reply_to}"
        lane = self._console_locks.get(key)
        if lane is None:
            lane = self._console_locks[key] = _Lane()
        lane.users += 1
        try:
            async with lane.lock:  # asyncio.Lock wakes waiters in FIFO order
                await self._execute(vc, release)
        finally:
            release()
            self._inflight -= 1
            lane.users -= 1
            # Only drop the lane when nobody waits on it, or a newcomer would
            # get a fresh lock and overtake the waiters.
            if lane.users == 0:
                del self._console_locks[key]

    async def _execute(self, vc: VerifiedCommand,
                       release: Callable[[], None] = _release_nothing) -> None:
        actor = Actor(user=vc.user.user, role=vc.user.role, via=f"mqtt:{vc.claims.reply_to}")

        def fault(exc: BaseException) -> None:
            self._audit("console.command_fault", actor.user, {
                "cmd": vc.cmd, "jti": vc.claims.jti, "console": vc.claims.reply_to,
                "reason": _one_line(exc)})

        try:
            answer = await execute(self.commands, actor, vc.cmd, vc.args,
                                   audit=self._audit, on_fault=fault, listeners=self._listeners)
        finally:
            release()  # what was held goes out before the reply, as it was made
        # The reply goes out in a task of its own: waiting here for the broker's PUBACK
        # would hold this console's lane, and its next command (the first hold after
        # a confirm) would wait for it. Replies still leave in command order: each
        # task publishes before its first await, in the order they were started.
        self._spawn(self._reply(vc.claims.reply_to, ReplyMessage(
            room=self.room, jti=vc.claims.jti, cmd=vc.cmd, ok=answer.ok, result=answer.result,
            code=answer.code, reason=answer.reason, ts=time.time())), "reply")

    async def _reply(self, console_id: str, msg: ReplyMessage) -> None:
        await self._publish(reply_topic(self.room, console_id), dumps(msg), qos=1)

    def _audit(self, event: str, actor: str, details: JsonMapping) -> None:
        try:
            self._audit_fn(event, actor, details)
        except Exception:  # auditing failure is logged loudly, the verdict stands
            log.exception("audit callback failed for %s", event)
