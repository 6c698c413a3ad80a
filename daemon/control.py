"""Local control API: JSON lines over a Unix socket on the treatment-room host.

One request per line, one reply per line: {"ok": true, "result": {...}} or
{"ok": false, "error": "...", "code": "..."}. A request is either

* plain, `{"cmd": "...", "user": "...", "args": {...}}`: the name in `user`
  is only a claim. It counts for a command that changes something only when
  the connection's peer credentials (SO_PEERCRED: the OS uid of the process
  that connected) are mapped to exactly that user by `local_uid` in the room
  configuration; or
* signed, `{"jws": "<compact JWS>"}`: the same token an MQTT console sends
  (cmd, args, sub, aud = this room, short lifetime, single-use jti), checked
  by the same `CommandVerifier` against the same registered Ed25519 keys.

So the second approval of a large correction always comes from a second
authenticated person whichever front end it arrived through (docs/operations.md,
"Who is who on each front end"). Read-only commands stay claim-based: every role
may run them, so a false name gains nothing. Stop and release stay accepted from
whoever can reach the socket (stop always wins); the audit record says what was
proven about the sender. The socket file is created 0660 so only the daemon's
group reaches it at all; roles come from the room configuration, never from the
request.

Commands run through the registry's dispatcher (`daemon.commands.execute`,
shared with the MQTT front end): roles checked, arguments validated by the
command's model (`bad_args`), every refusal answered with a code of
`daemon.errors.ErrorCode`. No request can end a connection or the daemon:
unreadable JSON, a line over MAX_REQUEST_BYTES and any exception while
handling one request are answered (code `bad_request` or `internal`),
audited, and the connection goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from asyncio.trsock import TransportSocket
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, Self

from joserfc.jwk import OKPKey
from pydantic import BaseModel

from daemon import commands
from daemon.api import Actor, Role, RoomCommands
from daemon.commands import Access, Answer
from daemon.config import RoomConfig
from daemon.console.tokens import (
    CommandRejected,
    CommandVerifier,
    MemoryReplayCache,
    ReplayCache,
    sign_command,
)
from daemon.console.users import RoomUserRegistry, room_registry
from daemon.errors import ErrorCode
from daemon.jsontypes import JsonMapping, JsonObject, JsonValue, as_object
from safety import strict_json

log = logging.getLogger("igrt.control")

MAX_REQUEST_BYTES = 1 << 20
# The deepest legitimate request is a proposal: request -> args -> matrix -> row.
MAX_REQUEST_DEPTH = 8
READ_CHUNK = 1 << 16

# What each command asks as proof of the sender is declared in the registry
# (daemon/commands.py, `Access`): READ commands change nothing and every role
# may run them, so the claimed name changes only the audit text (a viewer
# display polls these); STOP commands only ever take motion away and stop
# always wins, so they are accepted from whoever can reach the socket, audited
# with what is proven about the sender; every other command needs a proof.
# Answered by the socket itself: the room name (a signed request's audience)
# and how this connection is seen. Needs no user.
WHOAMI: Final = "whoami"
SIGNED_REPLY_TO: Final = "local"


class LocalService(RoomCommands, Protocol):
    """What the local socket needs of the service: the commands, and the audit log
    for what it refuses or fails on itself (RoomService; a stand-in in tests)."""

    def audit(self, event: str, actor: str, **details: object) -> None: ...


def _refusal(error: str, code: ErrorCode) -> JsonObject:
    return Answer.refused(code, error).local_reply()


@dataclass(frozen=True, slots=True)
class Peer:
    """What the kernel says about the process at the other end of a connection."""

    pid: int | None
    uid: int | None
    gid: int | None
    user: str | None  # igrt user whose local_uid is `uid`, if any

    @property
    def label(self) -> str:
        uid = "unknown" if self.uid is None else str(self.uid)
        return f"uid={uid}" + (f" ({self.user})" if self.user else "")


def peer_credentials(sock: socket.socket | TransportSocket | None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a connected Unix socket's peer, or None where unavailable."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def user_of_uid(config: RoomConfig, uid: int | None) -> str | None:
    if uid is None:
        return None
    for u in config.users:
        if getattr(u, "local_uid", None) == uid:
            return u.name
    return None


class LocalFrontEnd:
    """Authenticates local requests and calls RoomCommands (the service) with an Actor."""

    def __init__(self, service: LocalService, config: RoomConfig,
                 replay_cache: ReplayCache | None = None,
                 listeners: commands.CommandListeners | None = None,
                 users: RoomUserRegistry | None = None) -> None:
        self._service = service
        self._config = config
        self._listeners = listeners
        store = getattr(service, "store", None)
        cache: ReplayCache
        if replay_cache is not None:
            cache = replay_cache
        elif store is not None and callable(getattr(store, "remember_jti", None)):
            cache = store  # the durable one the MQTT front end uses too
        else:
            # Only a stand-in service (tests, fuzzing) has no durable store; RoomService has.
            log.warning("no durable replay cache: signed local requests are remembered in memory")
            cache = MemoryReplayCache()
        # The config's users and the users file's (re-read when it changes); igrtd
        # passes the registry the MQTT front end uses too. A bad config key slipping
        # past --check-config leaves igrtd up (stop must work), without that key.
        self.users = users if users is not None else room_registry(
            config.users, config.users_file, service)
        # The MQTT front end's verifier, keys and replay cache: one rule for a signature.
        self.verifier = CommandVerifier(self.users, config.room, cache)

    def peer(self, sock: socket.socket | TransportSocket | None) -> Peer:
        """`sock`: what the stream gives as its "socket" extra info (asyncio's wrapper)."""
        creds = peer_credentials(sock)
        if creds is None:
            return Peer(None, None, None, None)
        pid, uid, gid = creds
        return Peer(pid, uid, gid, user_of_uid(self._config, uid))

    def _audit(self, event: str, actor: str, **details: object) -> None:
        try:
            self._service.audit(event, actor, **details)
        except Exception:  # an audit failure is logged; the reply still goes out
            log.exception("audit of %s failed", event)

    async def answer_line(self, line: bytes, peer: Peer) -> JsonObject:
        """The reply to one request line; never raises (except cancellation)."""
        try:
            # Outside input: an object, until `answer` has checked what it is.
            msg: object = strict_json.loads(line, max_depth=MAX_REQUEST_DEPTH,
                                            max_bytes=MAX_REQUEST_BYTES)
        except strict_json.JsonInputError as exc:
            self._audit("reject", peer.user or f"uid:{peer.uid}", command=None,
                        reason=f"unreadable request: {exc}", via=f"local:{peer.label}")
            return _refusal(f"unreadable request: {exc}", ErrorCode.BAD_REQUEST)
        try:
            return await self.answer(msg, peer)
        except Exception as exc:  # one request must never end the connection
            cmd = msg.get("cmd") if isinstance(msg, dict) else None
            log.exception("local request %r failed", cmd)
            self._audit("internal_error", peer.user or f"uid:{peer.uid}",
                        command=cmd if isinstance(cmd, str) else None,
                        error=f"{type(exc).__name__}: {str(exc)[:200]}", via=f"local:{peer.label}")
            return _refusal(f"internal error while handling the request ({type(exc).__name__}); "
                            "see the igrtd log", ErrorCode.INTERNAL)

    async def answer(self, msg: object, peer: Peer) -> JsonObject:
        if not isinstance(msg, dict):
            return _refusal("request must be a JSON object", ErrorCode.BAD_REQUEST)
        if "jws" in msg:
            return await self._signed(msg, peer)
        cmd, user, args = msg.get("cmd"), msg.get("user"), msg.get("args") or {}
        if cmd == WHOAMI:
            return {"ok": True, "result": self._whoami(peer)}
        if not isinstance(cmd, str) or not isinstance(user, str) or not isinstance(args, dict):
            return _refusal("request needs string cmd and user, object args", ErrorCode.BAD_REQUEST)
        via = f"local:{peer.label}"
        # A user of the users file is known here too (a claim for read or stop commands).
        role = self._config.role_of(user) or self.users.role_of(user)
        if role is None:
            self._audit("reject", user, command=cmd, reason="unknown user", via=via)
            return _refusal(f"unknown user {user!r}", ErrorCode.FORBIDDEN)
        if peer.user != user and commands.access(cmd) is Access.PROOF:
            return self._unproven(cmd, user, peer)
        if peer.user != user:
            # Claimed, not proven: say so in every audit record this command writes.
            via = f"local:claimed {user} by {peer.label}"
        return await self._run(Actor(user=user, role=role, via=via), cmd, args)

    def _unproven(self, cmd: str, user: str, peer: Peer) -> JsonObject:
        if peer.user is None:
            reason = (f"{cmd} needs proof that you are {user!r}: sign it with your key "
                      f"(igrtctl --key FILE) or connect from the OS account mapped to "
                      f"{user!r} (local_uid); this connection is {peer.label}, mapped to no user")
            code = ErrorCode.UNAUTHENTICATED
        else:
            reason = (f"this connection is {peer.label}, authenticated as {peer.user!r}; "
                      f"it may not act as {user!r}")
            code = ErrorCode.FORBIDDEN
        self._audit("reject", peer.user or f"uid:{peer.uid}", command=cmd, claimed_user=user,
                    reason=reason, code=code, via=f"local:{peer.label}")
        return _refusal(reason, code)

    async def _signed(self, msg: JsonMapping, peer: Peer) -> JsonObject:
        token = msg.get("jws")
        if set(msg) != {"jws"} or not isinstance(token, str):
            return _refusal("a signed request is exactly {\"jws\": \"<compact JWS>\"}",
                            ErrorCode.BAD_REQUEST)
        try:
            verified = self.verifier.verify(token.encode("utf-8", "replace"))
        except CommandRejected as exc:
            self._audit("reject", exc.sub or f"uid:{peer.uid}", command=exc.cmd, reason=exc.reason,
                        code=exc.code, jti=exc.jti, via=f"local:key by {peer.label}")
            return _refusal(exc.reason, exc.code)
        actor = Actor(user=verified.user.user, role=verified.user.role,
                      via=f"local:key by {peer.label}")
        if not commands.COMMANDS[verified.cmd].heartbeat:
            # As the MQTT front end does: the token id in the audit log, from which
            # start-up remembers it again if a power loss took it from the state
            # store's replay cache (daemon/claim_recovery.py).
            self._audit("console.command_verified", actor.user, cmd=verified.cmd,
                        jti=verified.claims.jti, via=actor.via)
        return await self._run(actor, verified.cmd, verified.args)

    async def _run(self, actor: Actor, cmd: str,
                   args: JsonMapping | BaseModel) -> JsonObject:
        def fault(exc: BaseException) -> None:
            self._audit("internal_error", actor.user, command=cmd, via=actor.via,
                        error=f"{type(exc).__name__}: {str(exc)[:200]}")

        answer = await commands.execute(self._service, actor, cmd, args,
                                        audit=self._audit_record, on_fault=fault,
                                        listeners=self._listeners)
        return answer.local_reply()

    def _audit_record(self, event: str, actor: str, details: JsonMapping) -> None:
        self._audit(event, actor, **details)

    def _whoami(self, peer: Peer) -> JsonObject:
        role: Role | None = self._config.role_of(peer.user) if peer.user else None
        return {"room": self._config.room, "uid": peer.uid, "user": peer.user,
                "role": role.value if role else None}


class ControlServer:
    def __init__(self, service: LocalService, config: RoomConfig,
                 replay_cache: ReplayCache | None = None,
                 listeners: commands.CommandListeners | None = None,
                 users: RoomUserRegistry | None = None) -> None:
        self._config = config
        self.front = LocalFrontEnd(service, config, replay_cache, listeners, users)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self._config.control_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_socket():
            path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(path))
        os.chmod(path, 0o660)
        log.info("control socket at %s", path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = self.front.peer(writer.get_extra_info("socket"))
        buf = bytearray()
        skipping = False  # inside a line already refused as too large
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    if buf and not skipping:  # a last request without its newline
                        await self._reply(writer, await self.front.answer_line(bytes(buf), peer))
                    break
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_REQUEST_BYTES:
                            if not skipping:
                                await self._reply(writer, self._too_large(peer))
                                skipping = True
                            buf.clear()
                        break
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    if skipping:  # the end of the refused line: answered already
                        skipping = False
                        continue
                    if len(line) > MAX_REQUEST_BYTES:
                        reply = self._too_large(peer)
                    else:
                        reply = await self.front.answer_line(line, peer)
                    await self._reply(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # igrtd is stopping. The connection ends here and the handler returns
            # normally: Python 3.11's stream callback logs a cancelled handler as an
            # error with a traceback.
            pass
        finally:
            writer.close()

    def _too_large(self, peer: Peer) -> JsonObject:
        reason = f"request too large: limit {MAX_REQUEST_BYTES} bytes per line"
        self.front._audit("reject", peer.user or f"uid:{peer.uid}", command=None, reason=reason,
                          via=f"local:{peer.label}")
        return _refusal(reason, ErrorCode.BAD_REQUEST)

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: JsonObject) -> None:
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await writer.drain()


# ------------------------------------------------------------------ client
class _FromEnvironment:
    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


FROM_ENVIRONMENT: Final = _FromEnvironment()
KEY_DIR_ENV: Final = "IGRT_KEY_DIR"
SIGNED_LIFETIME_S: Final = 10.0


def key_from_environment(user: str) -> Path | None:
    """$IGRT_KEY_DIR/<user>.key when that file exists: the user's private key."""
    directory = os.environ.get(KEY_DIR_ENV)
    if not directory:
        return None
    path = Path(directory) / f"{user}.key"
    return path if path.is_file() else None


class ControlClient:
    """Blocking client for igrtctl and tests (one request at a time).

    With a key (an Ed25519 private JWK file or key; by default the file
    `$IGRT_KEY_DIR/<user>.key` if it exists) every command except the
    read-only ones is signed as `user`. Without one, the daemon takes the
    identity from this process's OS uid (`local_uid` in the room config).
    """

    def __init__(self, path: Path, user: str, timeout_s: float = 10.0, *,
                 key: OKPKey | str | Path | _FromEnvironment | None = FROM_ENVIRONMENT,
                 room: str | None = None) -> None:
        from daemon.console.keys import load_private_key

        if isinstance(key, _FromEnvironment):
            key = key_from_environment(user)
        self._key: OKPKey | None = load_private_key(key) if isinstance(key, (str, Path)) else key
        self._room = room
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self.user = user

    @property
    def signs(self) -> bool:
        return self._key is not None

    def _exchange(self, request: JsonObject) -> JsonObject:
        self._file.write(json.dumps(request, allow_nan=False).encode() + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise ConnectionError("igrtd closed the control connection")
        return as_object(json.loads(line), "igrtd's reply")

    def whoami(self) -> JsonObject:
        return self._exchange({"cmd": WHOAMI})

    def _audience(self) -> str:
        if self._room is None:
            reply = self.whoami()
            if not reply.get("ok"):
                raise ConnectionError(f"igrtd did not name its room: {reply.get('error')}")
            self._room = str(as_object(reply["result"], "whoami result")["room"])
        return self._room

    def call(self, cmd: str, **args: JsonValue) -> JsonObject:
        if self._key is None or commands.access(cmd) is Access.READ:
            return self._exchange({"cmd": cmd, "user": self.user, "args": args})
        token = sign_command(self._key, cmd=cmd, sub=self.user, aud=self._audience(),
                             reply_to=SIGNED_REPLY_TO, args=args, lifetime_s=SIGNED_LIFETIME_S,
                             now=time.time())
        return self._exchange({"jws": token})

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
