"""Registry of console users: who may sign commands, with which key and role.

The daemon trusts the role written here, never a role a token claims. The
file is JSON, validated on load; a bad file is refused as a whole with a
one-line error rather than half-loaded.

    {"v": 1, "users": [{"user": "alice", "role": "therapist",
                        "public_key": {"kty": "OKP", "crv": "Ed25519", "x": "..."}}]}
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
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
        return cls(entries)


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
        with os.fdopen(fd, "w") as f:
            f.write(data.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
