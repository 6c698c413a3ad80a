"""Commands arriving on `igrt/{room}/cmd`: verified, run, answered.

Every message is verified with a `CommandVerifier`, run through the registry's
dispatcher (`daemon.commands.execute`, shared with the local socket) as the
registered user, and answered on `igrt/{room}/reply/{console}` with a result
or a code of `daemon.errors.ErrorCode`.

Why commands run as tasks: a `stop` must never wait behind a slow command,
so stop runs at once; other commands run in arrival order per console (a
`release` must not overtake the `hold` sent before it), concurrently across
consoles, with a cap on how many are in flight.

No single message can take igrtd down: handling one message never raises.
A message the verifier refuses is audited and answered; anything unexpected
while handling it (a library bug met by a hostile payload) is audited as a
rejection with code `internal`, answered when the reply topic is known, and
the loop goes on.

A command carrying the MQTT retain flag is refused before it is parsed (code
`retained`): a retained message is a stored one, replayed by the broker to
every new subscriber, never a person's live request. Mosquitto cannot forbid
retain on one topic, so igrtd also clears the retained message it found
(an empty retained publish on the command topic, which its ACL allows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiomqtt

from daemon.api import Actor, RoomCommands
from daemon.commands import COMMANDS, CommandListeners, execute
from daemon.console.schemas import ReplyMessage, dumps, reply_topic
from daemon.console.tasks import LOGGER, GuardedTasks, Publish, one_line
from daemon.console.tokens import CommandRejected, CommandVerifier, VerifiedCommand
from daemon.errors import ErrorCode

log = logging.getLogger(LOGGER)

# Holds what a motion command does not need on its way to the couch (the room's
# publications, daemon/publications.py; background syncs, daemon/group_commit.py)
# from its verification until its answer; returns what releases them.
HoldBackground = Callable[[], Callable[[], None]]


def _release_nothing() -> None:
    return None


def hold_nothing() -> Callable[[], None]:
    """The `HoldBackground` of a console without one: nothing is held."""
    return _release_nothing


class _Lane:
    """Commands of one user at one console, run one at a time in arrival order."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class CommandDispatcher:
    """Runs the commands of one room's command topic, each answered once."""

    def __init__(self, room: str, room_commands: RoomCommands, verifier: CommandVerifier, *,
                 publish: Publish, tasks: GuardedTasks, max_inflight: int,
                 listeners: CommandListeners | None,
                 hold_background: HoldBackground) -> None:
        self._room = room
        self._commands = room_commands
        self._verifier = verifier
        self._publish = publish
        self._tasks = tasks
        self._max_inflight = max_inflight
        self._listeners = listeners
        self._hold_background = hold_background
        self._console_locks: dict[str, _Lane] = {}
        self._inflight = 0

    def on_message(self, message: aiomqtt.Message) -> None:
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
            self._tasks.audit("console.command_rejected", "unverified:?", {
                "code": ErrorCode.INTERNAL, "reason": f"internal error while handling a command: "
                f"{one_line(exc)}; not run", "cmd": None, "jti": None, "console": None,
                "claimed_user": None})

    def _refuse_retained(self, topic_name: str, payload: bytes) -> None:
        """Refused unread: nothing in a stored message is parsed or trusted."""
        if not payload:
            return  # an empty retained message only deletes one; nothing to refuse
        self._tasks.audit("console.command_rejected", "unverified:?", {
            "code": ErrorCode.RETAINED,
            "reason": "command carried the MQTT retain flag (a stored message replayed by the "
                      "broker, not a live request); not run, retained copy cleared",
            "bytes": len(payload), "cmd": None, "jti": None, "console": None,
            "claimed_user": None})
        self._tasks.spawn(self._clear_retained(topic_name), "clear retained command")

    async def _clear_retained(self, topic_name: str) -> None:
        if not await self._publish(topic_name, b"", qos=1, retain=True):
            log.warning("could not clear the retained command on %s", topic_name)
            return
        self._tasks.audit("console.retained_cleared", "system", {"topic": topic_name})

    def _on_command(self, payload: bytes) -> None:
        """Verify inline (cheap, keeps arrival order), execute as a task."""
        try:
            vc = self._verifier.verify(payload)
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
        release = self._hold_background() if command.moves else _release_nothing
        if not command.heartbeat:  # heartbeats at 20 Hz would drown the audit trail
            self._tasks.audit(
                "console.command_verified",
                vc.user.user,
                {"cmd": vc.cmd, "jti": vc.claims.jti, "console": vc.claims.reply_to,
                 **({"accepted_outside_time_window": vc.time_note} if vc.time_note else {})},
            )
        if command.immediate:
            self._tasks.spawn(self._execute(vc, release), vc.cmd)
            return
        if self._inflight >= self._max_inflight:
            release()
            self._tasks.spawn(
                self._reply(vc.claims.reply_to, ReplyMessage(
                    room=self._room, jti=vc.claims.jti, cmd=vc.cmd, ok=False, code=ErrorCode.BUSY,
                    reason=f"{self._inflight} commands in progress; try again", ts=time.time(),
                )),
                "reply",
            )
            return
        self._inflight += 1
        self._tasks.spawn(self._execute_in_order(vc, release), vc.cmd)

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
        self._tasks.audit("console.command_rejected", f"unverified:{rej.sub or '?'}", details)
        if rej.reply_to is not None:
            msg = ReplyMessage(
                room=self._room, jti=rej.jti, cmd=rej.cmd, ok=False, code=rej.code,
                reason=rej.reason, ts=time.time(),
            )
            self._tasks.spawn(self._reply(rej.reply_to, msg), "reply")

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
            self._tasks.audit("console.command_fault", actor.user, {
                "cmd": vc.cmd, "jti": vc.claims.jti, "console": vc.claims.reply_to,
                "reason": one_line(exc)})

        try:
            answer = await execute(self._commands, actor, vc.cmd, vc.args,
                                   audit=self._tasks.audit, on_fault=fault,
                                   listeners=self._listeners)
        finally:
            release()  # what was held goes out before the reply, as it was made
        # The reply goes out in a task of its own: waiting here for the broker's PUBACK
        # would hold this console's lane, and its next command (the first hold after
        # a confirm) would wait for it. Replies still leave in command order: each
        # task publishes before its first await, in the order they were started.
        self._tasks.spawn(self._reply(vc.claims.reply_to, ReplyMessage(
            room=self._room, jti=vc.claims.jti, cmd=vc.cmd, ok=answer.ok, result=answer.result,
            code=answer.code, reason=answer.reason, ts=time.time())), "reply")

    async def _reply(self, console_id: str, msg: ReplyMessage) -> None:
        await self._publish(reply_topic(self._room, console_id), dumps(msg), qos=1)
