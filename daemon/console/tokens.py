"""Signed console commands: compact JWS, EdDSA over Ed25519 (RFC 8037).

A command is authentic (signature by the registered key of `sub`), meant for
this room (`aud`), fresh (`iat`/`exp` within a short lifetime and the clock
skew allowance), allowed for the user's registered role, and used once
(`jti` remembered until it expires, in a cache that survives restart).

Signature maths is joserfc's; this module only decides what to accept. Every
rejection is a `CommandRejected` with a machine code and a one-line reason.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import OKPKey
from pydantic import BaseModel, ValidationError

from daemon import commands
from daemon.commands import CommandName
from daemon.console.schemas import CONSOLE_ID_PATTERN, CommandClaims
from daemon.console.users import RegisteredUser
from daemon.errors import ErrorCode, first_problem
from daemon.jsontypes import JsonMapping, JsonObject
from safety import strict_json

# A command is a flat object with one level of args (a proposal's matrix is the
# deepest: claims -> args -> matrix -> row). Far below anything that could reach
# the interpreter's recursion limit; strict_json refuses deeper input unparsed.
MAX_PAYLOAD_DEPTH = 8
MAX_HEADER_DEPTH = 2

# Consoles sign with "Ed25519", RFC 9864's fully-specified name for EdDSA
# over Ed25519. The older polymorphic "EdDSA" (RFC 8037) is accepted too, for
# JOSE libraries that do not know the new name; registered keys are Ed25519
# only, so both mean the same. joserfc warns on every "EdDSA" use; silenced.
SIGNING_ALG = "Ed25519"
ACCEPTED_ALGS = ("Ed25519", "EdDSA")
TOKEN_TYPE = "igrt-cmd+jws"
_ALLOWED_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

log = logging.getLogger(__name__)
_JWS_REGISTRY = jws.JWSRegistry(algorithms=list(ACCEPTED_ALGS))
_CONSOLE_ID = re.compile(CONSOLE_ID_PATTERN)


class ReplayCache(Protocol):
    """Remembers used token ids. `daemon.store.CorrectionStore` is the durable one."""

    def remember_jti(self, jti: str, exp: float) -> bool:
        """True if jti is new (and is now remembered until `exp`), False if seen."""
        ...


class UserLookup(Protocol):
    """Who may sign: `daemon.console.users.UserRegistry` is the real one."""

    def lookup(self, user: str) -> RegisteredUser | None: ...


# What the verifier could read of an unverified message, for reply routing and
# audit text (the keyword arguments of CommandRejected it is spread into).
Hints = dict[str, str | None]


class MemoryReplayCache:
    """In-memory replay cache for tests and benches; forgets on restart, so
    production uses the persistent store instead."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}

    def remember_jti(self, jti: str, exp: float) -> bool:
        now = self._clock()
        if len(self._seen) > 10_000:
            # Expired tokens are refused by the verifier anyway, so forgetting them is safe.
            self._seen = {j: e for j, e in self._seen.items() if e >= now}
        known = self._seen.get(jti)
        if known is not None and known >= now:
            return False
        self._seen[jti] = exp
        return True


class CommandRejected(Exception):
    """A console command refused before it reached RoomCommands.

    `reply_to` is set only when the reply topic could be read from the
    message and is a valid console id (it may still be unauthenticated; the
    reply can only ever go under the daemon's own reply prefix).
    """

    def __init__(
        self,
        code: ErrorCode,
        reason: str,
        *,
        reply_to: str | None = None,
        sub: str | None = None,
        jti: str | None = None,
        cmd: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.reply_to = reply_to
        self.sub = sub
        self.jti = jti
        self.cmd = cmd


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    claims: CommandClaims
    user: RegisteredUser
    args: BaseModel
    # Set when a stop was accepted though dated outside the time window: what was wrong
    # with its time, for the audit record (daemon/console/dispatch.py).
    time_note: str | None = None

    @property
    def cmd(self) -> str:
        return self.claims.cmd


def sign_command(
    key: OKPKey,
    *,
    cmd: CommandName | str,
    sub: str,
    aud: str,
    reply_to: str,
    args: JsonObject | None = None,
    lifetime_s: float = 10.0,
    now: float | None = None,
    jti: str | None = None,
    extra_claims: JsonObject | None = None,
) -> str:
    """Compact JWS of a console command. `extra_claims` exists for tests that
    need to forge odd tokens; real consoles never pass it."""
    iat = time.time() if now is None else now
    claims: JsonObject = {
        "v": 1,
        "cmd": cmd,
        "args": args or {},
        "sub": sub,
        "aud": aud,
        "iat": iat,
        "exp": iat + lifetime_s,
        "jti": jti or uuid.uuid4().hex,
        "reply_to": reply_to,
    }
    if extra_claims:
        claims.update(extra_claims)
    header: JsonObject = {"alg": SIGNING_ALG, "typ": TOKEN_TYPE}
    try:
        # igrtd refuses NaN/Infinity anywhere in a command; never sign one.
        payload = json.dumps(claims, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ValueError(
            f"command {cmd}: every number must be finite (NaN and Infinity cannot be sent)"
        ) from None
    return jws.serialize_compact(header, payload, key, registry=_JWS_REGISTRY)


def _hint(obj: JsonMapping, name: str) -> str | None:
    """An unverified claim, only for audit text and reply routing: short strings only."""
    value = obj.get(name)
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    return None


class CommandVerifier:
    """Turns raw bytes from the command topic into a VerifiedCommand or a CommandRejected."""

    def __init__(
        self,
        registry: UserLookup,
        room: str,
        replay_cache: ReplayCache,
        clock: Callable[[], float] = time.time,
        max_lifetime_s: float = 30.0,
        max_clock_skew_s: float = 2.0,
        max_payload_bytes: int = 16384,
    ) -> None:
        self.registry = registry
        self.room = room
        self.replay_cache = replay_cache
        self.clock = clock
        self.max_lifetime_s = max_lifetime_s
        self.max_clock_skew_s = max_clock_skew_s
        self.max_payload_bytes = max_payload_bytes

    def verify(self, payload: bytes) -> VerifiedCommand:
        """The verified command, or CommandRejected; never any other exception.

        Whatever goes wrong inside (a parser or library bug met by a hostile
        token) becomes a rejection with code `internal`, carrying the reply
        topic when it could already be read, so one message cannot take the
        caller down.
        """
        ctx: Hints = {}
        try:
            return self._verify(payload, ctx)
        except CommandRejected:
            raise
        except Exception as exc:  # see docstring: refuse, never propagate
            log.exception("command verification failed unexpectedly")
            raise CommandRejected(
                ErrorCode.INTERNAL,
                f"internal error while verifying the command ({type(exc).__name__}); not run",
                **ctx,
            ) from None

    def _verify(self, payload: bytes, ctx: Hints) -> VerifiedCommand:
        size = len(payload)
        if size > self.max_payload_bytes:
            # Not parsed at all: nothing in an oversized message is looked at.
            raise CommandRejected(
                ErrorCode.OVERSIZED, f"command is {size} bytes, limit is {self.max_payload_bytes} bytes"
            )
        try:
            text = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CommandRejected(
                ErrorCode.MALFORMED, "command is not a compact JWS (non-ASCII bytes)"
            ) from None
        if text.startswith("{"):
            self._reject_plain_json(text)
        # The protected header is read strictly before joserfc parses it with
        # the permissive json module (nesting, duplicate alg, NaN).
        header_segment = text.split(".", 1)[0]
        try:
            header_json = base64.urlsafe_b64decode(header_segment + "=" * (-len(header_segment) % 4))
            strict_json.loads(header_json, max_depth=MAX_HEADER_DEPTH, max_bytes=1024)
        except strict_json.JsonInputError as exc:
            raise CommandRejected(ErrorCode.MALFORMED, f"JWS header refused: {exc}") from None
        except ValueError:
            raise CommandRejected(
                ErrorCode.MALFORMED, "command is not a compact JWS (header.payload.signature, base64url)"
            ) from None
        try:
            obj = jws.extract_compact(text.encode(), registry=_JWS_REGISTRY)
        except (JoseError, ValueError):
            raise CommandRejected(
                ErrorCode.MALFORMED, "command is not a compact JWS (header.payload.signature, base64url)"
            ) from None
        try:
            body = strict_json.loads(
                obj.payload, max_depth=MAX_PAYLOAD_DEPTH, max_bytes=self.max_payload_bytes
            )
        except strict_json.JsonInputError as exc:
            raise CommandRejected(ErrorCode.MALFORMED, f"JWS payload refused: {exc}") from None
        if not isinstance(body, dict):
            raise CommandRejected(ErrorCode.MALFORMED, "JWS payload is not a JSON object")
        reply_to = _hint(body, "reply_to")
        ctx.update({
            "reply_to": reply_to if reply_to and _CONSOLE_ID.match(reply_to) else None,
            "sub": _hint(body, "sub"),
            "jti": _hint(body, "jti"),
            "cmd": _hint(body, "cmd"),
        })
        header = obj.headers()
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise CommandRejected(ErrorCode.UNSIGNED, "command is unsigned (alg none)", **ctx)
        if alg not in ACCEPTED_ALGS:
            raise CommandRejected(
                ErrorCode.BAD_ALG, f"signature algorithm {alg!r} is not accepted; use Ed25519 (EdDSA)", **ctx
            )
        unexpected = set(header) - _ALLOWED_HEADER_KEYS
        if unexpected or header.get("typ", TOKEN_TYPE) != TOKEN_TYPE:
            raise CommandRejected(
                ErrorCode.MALFORMED,
                f"JWS header must hold only alg, typ={TOKEN_TYPE}, kid "
                f"(got {', '.join(sorted(header))})",
                **ctx,
            )
        sub = ctx["sub"]
        if sub is None:
            raise CommandRejected(ErrorCode.MALFORMED, "claims: sub is missing", **ctx)
        user = self.registry.lookup(sub)
        if user is None:
            raise CommandRejected(ErrorCode.UNKNOWN_USER, f"unknown user {sub!r}", **ctx)
        try:
            genuine = jws.validate_compact(obj, user.key, registry=_JWS_REGISTRY)
        except JoseError:
            genuine = False
        if not genuine:
            raise CommandRejected(
                ErrorCode.BAD_SIGNATURE,
                f"signature does not verify with the registered key of user {sub!r}",
                **ctx,
            )
        # From here on the claims are the signer's own words.
        try:
            claims = CommandClaims.model_validate(body)
        except ValidationError as exc:
            raise CommandRejected(ErrorCode.MALFORMED, f"claims: {first_problem(exc, 'claims')}",
                                  **ctx) from None
        if claims.aud != self.room:
            raise CommandRejected(
                ErrorCode.WRONG_ROOM, f"command is for room {claims.aud!r}, this is room {self.room!r}", **ctx
            )
        time_note = self._check_time(claims, ctx)
        if not commands.may(user.role, claims.cmd):
            raise CommandRejected(
                ErrorCode.FORBIDDEN,
                f"role {user.role.value} may not {claims.cmd} "
                f"(allowed: {', '.join(commands.allowed_roles(claims.cmd))})",
                **ctx,
            )
        args_model = commands.ARGS_MODELS.get(claims.cmd)
        if args_model is None:
            raise CommandRejected(
                ErrorCode.UNSUPPORTED, f"command {claims.cmd!r} is not offered over MQTT", **ctx
            )
        try:
            args = args_model.model_validate(claims.args)
        except ValidationError as exc:
            raise CommandRejected(
                ErrorCode.BAD_ARGS, f"{claims.cmd} args: {first_problem(exc, 'args')}", **ctx
            ) from None
        # Last, so only a command that would otherwise be accepted uses up its jti.
        # A stop accepted outside its time window is remembered for a whole lifetime from
        # now: it may have expired already, and must still run once only.
        keep_until = max(claims.exp, self.clock() + self.max_lifetime_s) if time_note else claims.exp
        try:
            fresh = self.replay_cache.remember_jti(claims.jti, keep_until + self.max_clock_skew_s)
        except Exception as exc:  # noqa: BLE001 - any store failure: fail closed, except stop
            if claims.cmd != "stop":
                raise CommandRejected(
                    ErrorCode.UNAVAILABLE, f"replay cache unavailable, command not run: {exc}", **ctx
                ) from None
            # Stopping twice is harmless; refusing a stop because a disk is full is not.
            log.error("replay cache failed (%s); accepting stop %s anyway", exc, claims.jti)
            fresh = True
        if not fresh:
            raise CommandRejected(
                ErrorCode.REPLAYED, f"command {claims.jti} was already received; not run again", **ctx
            )
        return VerifiedCommand(claims=claims, user=user, args=args, time_note=time_note)

    def _check_time(self, claims: CommandClaims, ctx: Hints) -> str | None:
        """Refuses a command outside its time window, except a stop: that is accepted, and
        what was wrong with its time returned for the audit. A console whose clock is off
        (a browser on a ward PC without NTP) must still be able to stop the couch;
        stopping late or twice is harmless, refusing a stop is not. Its signature, room,
        role and single use are checked as for every command; times that are not finite
        numbers or a lifetime beyond the limit are refused even for a stop."""
        # Every comparison with NaN is false, so a NaN iat or exp would pass
        # each check below; the claims model refuses them, and so does this
        # (the one place the lifetime rule is decided must not depend on it).
        for name in ("iat", "exp"):
            value = getattr(claims, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CommandRejected(
                    ErrorCode.MALFORMED, f"claims: {name} is {value!r}, not a finite UNIX time", **ctx
                )
        now = self.clock()
        skew = self.max_clock_skew_s
        lifetime = claims.exp - claims.iat
        if lifetime <= 0:
            raise CommandRejected(ErrorCode.MALFORMED, "claims: exp is not after iat", **ctx)
        if lifetime > self.max_lifetime_s:
            raise CommandRejected(
                ErrorCode.LIFETIME_TOO_LONG,
                f"command lifetime {lifetime:.1f} s exceeds limit {self.max_lifetime_s:g} s",
                **ctx,
            )
        refusal: CommandRejected | None = None
        if claims.iat > now + skew:
            refusal = CommandRejected(
                ErrorCode.NOT_YET_VALID,
                f"command issued {claims.iat - now:.1f} s in the future "
                f"(clock skew limit {skew:g} s)",
                **ctx,
            )
        elif now > claims.exp + skew:
            refusal = CommandRejected(
                ErrorCode.EXPIRED, f"command expired {now - claims.exp:.1f} s ago", **ctx
            )
        if refusal is None:
            return None
        if claims.cmd != "stop":
            raise refusal
        return f"{refusal.code}: {refusal}"

    def _reject_plain_json(self, text: str) -> None:
        ctx: Hints = {}
        try:
            body = strict_json.loads(
                text, max_depth=MAX_PAYLOAD_DEPTH, max_bytes=self.max_payload_bytes
            )
        except strict_json.JsonInputError as exc:
            raise CommandRejected(
                ErrorCode.MALFORMED, f"command is neither a compact JWS nor acceptable JSON: {exc}"
            ) from None
        if isinstance(body, dict):
            reply_to = _hint(body, "reply_to")
            ctx = {
                "reply_to": reply_to if reply_to and _CONSOLE_ID.match(reply_to) else None,
                "sub": _hint(body, "sub"),
                "jti": _hint(body, "jti"),
                "cmd": _hint(body, "cmd"),
            }
        raise CommandRejected(
            ErrorCode.UNSIGNED, "command is unsigned plain JSON; send a compact JWS signed with Ed25519", **ctx
        )
