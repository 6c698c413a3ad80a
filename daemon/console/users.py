"""Registry of console users: who may sign commands, with which key and role.

The daemon trusts the role written here, never a role a token claims. The
file is JSON, validated on load; a bad file is refused as a whole with a
one-line error rather than half-loaded.

    {"v": 1, "users": [{"user": "alice", "role": "therapist",
                        "public_key": {"kty": "OKP", "crv": "Ed25519", "x": "..."}}]}

igrtd's registry is `RoomUserRegistry`: the room config's users with a key,
plus those of the config's `users_file` (the file `igrtctl users add/remove`
edits), re-read when the file changes, so enrolment and revocation act
without a restart (docs/console-api.md "User registry").
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.api import Role
from daemon.errors import first_problem
from safety import strict_json

USER_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
# How often igrtd looks at the users file: at most one os.stat per this period,
# on the command path (the verifier's lookup); the file is re-read only when
# its (mtime_ns, size, inode) changed.
USERS_FILE_CHECK_S = 0.5

log = logging.getLogger("igrt.console")


class ConfigUser(Protocol):
    """A user as the room config gives one (daemon.config.UserConfig); read-only here."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> Role: ...

    @property
    def public_key(self) -> Mapping[str, object] | None: ...


class RegistryError(Exception):
    """The user registry file or an edit to it is invalid (one-line message)."""


class PublicJwk(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(min_length=43, max_length=43, description="base64url public key, 32 bytes")

    @field_validator("x")
    @classmethod
    def _is_a_key(cls, x: str) -> str:
        try:
            OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x})
        except (JoseError, ValueError) as exc:
            raise ValueError(f"not an Ed25519 public key: {exc}") from None
        return x


class UserEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user: str = Field(pattern=USER_PATTERN)
    role: Role
    public_key: PublicJwk


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    users: list[UserEntry] = Field(default_factory=list)

    @field_validator("users")
    @classmethod
    def _unique(cls, users: list[UserEntry]) -> list[UserEntry]:
        seen: set[str] = set()
        for u in users:
            if u.user in seen:
                raise ValueError(f"user {u.user!r} is listed twice")
            seen.add(u.user)
        return users


@dataclass(frozen=True, slots=True)
class RegisteredUser:
    user: str
    role: Role
    key: OKPKey


class UserRegistry:
    """Users by name, keys imported once at load (verification is on the hot path)."""

    def __init__(self, entries: list[UserEntry]) -> None:
        self._users = {
            e.user: RegisteredUser(e.user, e.role, OKPKey.import_key(e.public_key.model_dump()))
            for e in entries
        }
        self.entries = tuple(entries)

    def lookup(self, user: str) -> RegisteredUser | None:
        return self._users.get(user)

    def __len__(self) -> int:
        return len(self._users)

    @classmethod
    def load(cls, path: str | Path) -> UserRegistry:
        return cls(read_registry_file(path).users)

    @classmethod
    def from_config_users(cls, users: Iterable[ConfigUser]) -> UserRegistry:
        """From daemon.config UserConfig-like objects (name, role, public_key);
        users without a public key cannot sign and are left out."""
        return cls(config_entries(users))


def config_entries(users: Iterable[ConfigUser]) -> list[UserEntry]:
    """The registry entries of the room config's users that have a public key."""
    entries = []
    for u in users:
        if u.public_key is None:
            continue
        try:
            entries.append(
                UserEntry.model_validate(
                    {"user": u.name, "role": u.role, "public_key": u.public_key}
                )
            )
        except ValidationError as exc:
            raise RegistryError(
                f"user {u.name!r}: public_key: {exc.errors()[0]['msg']}"
            ) from None
    return entries


def read_users_file(path: Path, config_names: Iterable[str]) -> RegistryFile:
    """The users file as igrtd takes it: valid as a whole, and no name of the room
    config in it (one person, one definition: which key and role would count?)."""
    data = read_registry_file(path)
    both = sorted({u.user for u in data.users} & set(config_names))
    if both:
        raise RegistryError(f"user registry {path}: {', '.join(repr(n) for n in both)} "
                            "also in the room config's users; a user is defined in one place")
    return data


AuditFn = Callable[[str, str, dict[str, object]], None]
_StatKey = tuple[int, int, int] | tuple[str, int]


def _stat_key(path: Path) -> _StatKey:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("unreadable", exc.errno or 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RoomUserRegistry:
    """igrtd's users: the room config's (with a key) plus the users file's, the file
    re-read when it changes. One instance serves both front ends (the MQTT verifier and
    the local socket), so both see an enrolment or a revocation at the same moment.

    `lookup` (on every signed command) looks at the file at most every
    USERS_FILE_CHECK_S: one os.stat; only a changed (mtime_ns, size, inode) reads it.
    A file that is unreadable or invalid after a change is refused as a whole: the last
    valid registry stays, and the refusal is audited once per change
    (`users.registry_refused`); a valid file replaces the registry at once
    (`users.registry_reloaded`, with who was added, removed or changed). Never raises:
    igrtd must keep running (stop must work) whatever the file holds.
    """

    def __init__(self, config_users: Iterable[ConfigUser], users_file: Path | None = None, *,
                 audit: AuditFn | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 config_names: Iterable[str] = ()) -> None:
        users = list(config_users)
        self._config_names = frozenset(u.name for u in users) | frozenset(config_names)
        self._config_entries = config_entries(users)
        self.users_file = users_file
        self._audit_fn = audit
        self._clock = clock
        self._registry = UserRegistry(self._config_entries)
        self._file_entries: dict[str, UserEntry] = {}
        self._key: _StatKey | None = None
        self._checked_at = float("-inf")
        self._first = True
        if users_file is not None:
            self._check(self._clock())

    def lookup(self, user: str) -> RegisteredUser | None:
        if self.users_file is not None:
            now = self._clock()
            if now - self._checked_at >= USERS_FILE_CHECK_S:
                self._check(now)
        return self._registry.lookup(user)

    def role_of(self, user: str) -> Role | None:
        found = self.lookup(user)
        return None if found is None else found.role

    def __len__(self) -> int:
        return len(self._registry)

    @property
    def file_users(self) -> tuple[str, ...]:
        return tuple(self._file_entries)

    def check_now(self) -> None:
        """Look at the file now, whatever the period (tests, diagnostics)."""
        self._check(self._clock())

    def _check(self, now: float) -> None:
        assert self.users_file is not None
        self._checked_at = now
        key = _stat_key(self.users_file)  # before reading: a change after it is seen next time
        if key == self._key:
            return
        self._key = key
        try:
            data = read_users_file(self.users_file, self._config_names)
            registry = UserRegistry([*self._config_entries, *data.users])
        except RegistryError as exc:
            self._refused(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a library fault on this file: refused too
            self._refused(f"user registry {self.users_file}: {type(exc).__name__}: {exc}")
            return
        old, new = self._file_entries, {u.user: u for u in data.users}
        self._registry, self._file_entries = registry, new
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(n for n in set(new) & set(old) if new[n] != old[n])
        log.info("user registry %s: %d users (added %s, removed %s, changed %s)",
                 self.users_file, len(new), added, removed, changed)
        self._audit("users.registry_loaded" if self._first else "users.registry_reloaded", {
            "file": str(self.users_file), "users": len(new), "added": added,
            "removed": removed, "changed": changed})
        self._first = False

    def _refused(self, error: str) -> None:
        error = " ".join(error.split())
        log.error("%s; keeping the last valid registry (%d users from the file)",
                  error, len(self._file_entries))
        self._audit("users.registry_refused", {
            "file": str(self.users_file), "error": error,
            "kept": sorted(self._file_entries)})

    def _audit(self, event: str, details: dict[str, object]) -> None:
        if self._audit_fn is None:
            return
        try:
            self._audit_fn(event, "system", details)
        except Exception:  # an audit failure must not fail the command being verified
            log.exception("audit of %s failed", event)


class _AuditingService(Protocol):
    def audit(self, event: str, actor: str, **details: object) -> None: ...


def room_registry(users: Iterable[ConfigUser], users_file: Path | None,
                  service: _AuditingService | None = None) -> RoomUserRegistry:
    """igrtd's registry for a room config (its `users` and `users_file`), auditing to the
    service. Never raises: should a config key be refused here after --check-config
    accepted it, the config's keys are left out (logged) and igrtd stays up, stop
    working, rather than exiting in a loop."""
    audit: AuditFn | None = None
    if service is not None:
        def audit(event: str, actor: str, details: dict[str, object]) -> None:
            service.audit(event, actor, **details)
    users = list(users)
    try:
        return RoomUserRegistry(users, users_file, audit=audit)
    except RegistryError as exc:
        log.error("no signed commands from the room config's users: %s", exc)
        return RoomUserRegistry([], users_file, audit=audit, config_names=[u.name for u in users])


def read_registry_file(path: str | Path) -> RegistryFile:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read user registry {p}: {exc.strerror}") from None
    try:
        # Strict reading first: NaN, duplicate keys (which entry counts?) and deep nesting out.
        return RegistryFile.model_validate(strict_json.loads(raw, max_depth=8))
    except strict_json.JsonInputError as exc:
        raise RegistryError(f"invalid user registry {p}: {exc}") from None
    except ValidationError as exc:
        raise RegistryError(f"invalid user registry {p}: {first_problem(exc, 'file')}") from None


def _write_atomically(path: Path, data: RegistryFile) -> None:
    # A half-written registry would lock every console out (or worse, parse
    # with a user missing), so write a temp file and rename over.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        _keep_access(fd, path)
        with os.fdopen(fd, "w") as f:
            f.write(data.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep_access(fd: int, path: Path) -> None:
    """The new file gets the old one's mode, owner and group (mkstemp makes it 0600 for
    whoever runs igrtctl, often root: igrtd, another account, could no longer read the
    registry it re-reads). A first file: 0640, the directory's group (/etc/igrt: igrt)."""
    try:
        st = os.stat(path)
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o640, -1, os.stat(path.parent).st_gid
    os.fchmod(fd, mode)
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:  # not root: the file stays this account's, as before
        pass


def load_public_jwk(path: str | Path) -> dict[str, str]:
    p = Path(path)
    try:
        obj = strict_json.loads(p.read_bytes(), max_depth=1, max_bytes=16384)
    except OSError as exc:
        raise RegistryError(f"cannot read public key {p}: {exc.strerror}") from None
    except strict_json.JsonInputError as exc:
        raise RegistryError(f"public key {p} is not a JWK: {exc}") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"public key {p} is not a JWK object")
    if "d" in obj:
        raise RegistryError(f"{p} holds a PRIVATE key; give the .pub.jwk file")
    try:
        return PublicJwk.model_validate(obj).model_dump()
    except ValidationError as exc:
        raise RegistryError(f"public key {p}: {exc.errors()[0]['msg']}") from None


def add_user(
    registry_path: str | Path,
    user: str,
    role: Role | str,
    public_jwk: dict[str, str],
    *,
    replace: bool = False,
) -> UserEntry:
    """Add (or with replace=True, update) a user; creates the file if missing."""
    p = Path(registry_path)
    data = read_registry_file(p) if p.exists() else RegistryFile()
    try:
        entry = UserEntry.model_validate({"user": user, "role": role, "public_key": public_jwk})
    except ValidationError as exc:
        raise RegistryError(f"invalid user entry: {first_problem(exc, 'entry')}") from None
    others = [u for u in data.users if u.user != user]
    if len(others) != len(data.users) and not replace:
        raise RegistryError(f"user {user!r} already exists in {p} (use --replace)")
    _write_atomically(p, RegistryFile(users=[*others, entry]))
    return entry


def remove_user(registry_path: str | Path, user: str) -> None:
    p = Path(registry_path)
    data = read_registry_file(p)
    others = [u for u in data.users if u.user != user]
    if len(others) == len(data.users):
        raise RegistryError(f"user {user!r} is not in {p}")
    _write_atomically(p, RegistryFile(users=others))


def list_users(registry_path: str | Path) -> list[UserEntry]:
    return list(read_registry_file(registry_path).users)
