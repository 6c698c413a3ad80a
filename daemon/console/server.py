"""The daemon side of the MQTT console API.

`MqttConsole` keeps one broker connection for a room (reconnecting with
back-off) and serves it: commands arriving on `igrt/{room}/cmd` are verified,
run and answered by a `CommandDispatcher` (dispatch.py); it publishes the
retained state snapshot, events, presence (`online`, with `offline` as the
broker-held last will), rate-limited telemetry (telemetry.py) and the review
images of a registration (review.py). Everything it starts in the background
runs as guarded tasks (tasks.py).

Losing the broker is reported through `on_link_change(False)`: with the link
gone hold-to-run heartbeats cannot arrive, so the daemon stops any move
rather than wait for the heartbeat timeout.

No single message can take igrtd down (dispatch.py); tasks the console starts
are guarded the same way, and an unexpected error in the connection itself
reconnects like a broker loss.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.api import RoomCommands
from daemon.commands import CommandListeners
from daemon.console.dispatch import CommandDispatcher, HoldBackground, hold_nothing
from daemon.console.review import ReviewSender
from daemon.console.schemas import EventMessage, StateMessage, StatusMessage, dumps, topic
from daemon.console.tasks import AuditFn, GuardedTasks, log_audit, one_line
from daemon.console.telemetry import TelemetryThrottle
from daemon.console.tokens import CommandVerifier
from daemon.jsontypes import JsonMapping
from imaging.review_messages import ReviewMessages

log = logging.getLogger(__name__)

# Without TCP_NODELAY, Nagle + delayed ACK stall small request/reply
# exchanges over loopback by tens of milliseconds.
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
        audit: AuditFn = log_audit,
        state_provider: Callable[[], JsonMapping | None] | None = None,
        on_link_change: Callable[[bool], None] | None = None,
        telemetry_max_hz: float = 20.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        keepalive_s: int = 5,
        max_inflight_commands: int = 32,
        client_id: str | None = None,
        listeners: CommandListeners | None = None,
        hold_background: HoldBackground | None = None,
    ) -> None:
        if verifier.room != room:
            raise ValueError(f"verifier is for room {verifier.room!r}, console for {room!r}")
        self.commands = room_commands
        self.verifier = verifier
        self.room = room
        self._host = broker_host
        self._port = broker_port
        self._username = username
        self._password = password
        self._tls = tls
        self._state_provider = state_provider
        self._on_link_change = on_link_change
        self._reconnect_min = reconnect_min_s
        self._reconnect_max = reconnect_max_s
        self._keepalive = keepalive_s
        self._client_id = client_id or f"igrtd-{room}"

        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._last_state: JsonMapping | None = None
        self._seq = {"state": 0, "event": 0}
        self.connections = 0  # successful connects, for tests and diagnostics
        # The broker's Maximum Packet Size (MQTT 5 CONNACK), None when it sets none.
        self.broker_max_packet: int | None = None

        self._tasks = GuardedTasks(audit)
        self._telemetry = TelemetryThrottle(room, telemetry_max_hz, self._publish, self._tasks)
        self._reviews = ReviewSender(
            room, self._publish, self._tasks,
            connected=lambda: self._client is not None,
            broker_max_packet=lambda: self.broker_max_packet)
        self._dispatcher = CommandDispatcher(
            room, room_commands, verifier, publish=self._publish, tasks=self._tasks,
            max_inflight=max_inflight_commands, listeners=listeners,
            # Held from a motion command's verification until its answer (the
            # publications and background syncs, RoomService.hold_background);
            # nothing held without it.
            hold_background=hold_background or hold_nothing)

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
        await self._tasks.run(self._connection_loop)

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
                                self._dispatcher.on_message(message)
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
                self._tasks.audit("console.fault", "system", {
                    "what": "MQTT console link", "reason": one_line(exc), "action": "reconnect"})
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
        self._reviews.resend_after_connect()

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
            log.error("publish to %s failed unexpectedly: %s", t, one_line(exc))
            return False
        return True

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
        """Retained, QoS 1: the review images of a registration (review.py,
        docs/console-api.md "Review images"). True when all reached the broker;
        otherwise the latest review is sent again after the next connect, unless
        the broker's packet limit refuses it."""
        return await self._reviews.publish(review)

    async def publish_telemetry(self, data: JsonMapping) -> None:
        """Latest-wins, at most telemetry_max_hz: a burst is coalesced and the
        newest sample is sent at the next slot, so the last pose is never lost."""
        await self._telemetry.offer(data)
