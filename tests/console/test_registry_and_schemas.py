"""User registry, key files, and the published JSON Schemas."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from daemon.api import Role
from daemon.console.keys import KeyFileError, generate_keypair, load_private_key
from daemon.console.schemas import schema_documents
from daemon.console.users import (
    RegistryError,
    UserRegistry,
    add_user,
    list_users,
    load_public_jwk,
    remove_user,
)

REPO = Path(__file__).resolve().parents[2]


def test_committed_json_schemas_are_up_to_date() -> None:
    docs = REPO / "docs" / "schemas"
    expected = schema_documents()
    committed = {p.name: p.read_text() for p in docs.glob("*.schema.json")}
    assert committed == expected, (
        "docs/schemas is stale: run .venv/bin/python -m daemon.command_docs --write"
    )


def test_every_message_schema_carries_a_version() -> None:
    for name, text in schema_documents().items():
        if not name.endswith("-args.schema.json"):
            assert "v" in json.loads(text)["properties"], name


def test_private_key_file_is_owner_only_and_loads(tmp_path: Path) -> None:
    public = generate_keypair(tmp_path / "k.key", tmp_path / "k.pub.jwk")
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert "d" not in public and public["crv"] == "Ed25519"
    assert load_private_key(tmp_path / "k.key").is_private


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub.jwk")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "k.key", tmp_path / "other.pub.jwk")


def test_public_key_is_not_accepted_for_signing(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub.jwk")
    with pytest.raises(KeyFileError, match="public key"):
        load_private_key(tmp_path / "k.pub.jwk")


def test_private_key_is_not_accepted_into_the_registry(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub.jwk")
    with pytest.raises(RegistryError, match="PRIVATE"):
        load_public_jwk(tmp_path / "k.key")


def test_registry_add_list_remove(tmp_path: Path) -> None:
    reg = tmp_path / "users.json"
    pub = generate_keypair(tmp_path / "a.key", tmp_path / "a.pub.jwk")
    add_user(reg, "alice", "therapist", pub)
    assert [(u.user, u.role) for u in list_users(reg)] == [("alice", Role.THERAPIST)]
    with pytest.raises(RegistryError, match="already exists"):
        add_user(reg, "alice", "approver", pub)
    add_user(reg, "alice", "approver", pub, replace=True)
    assert UserRegistry.load(reg).lookup("alice").role == Role.APPROVER  # type: ignore[union-attr]
    remove_user(reg, "alice")
    assert list_users(reg) == []


def test_registry_refuses_unknown_role(tmp_path: Path) -> None:
    pub = generate_keypair(tmp_path / "a.key", tmp_path / "a.pub.jwk")
    with pytest.raises(RegistryError, match="role"):
        add_user(tmp_path / "users.json", "alice", "admin", pub)


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json", "invalid user registry"),
        (
            (
                '{"v": 1, "users": [{"user": "a", "role": "therapist", "public_key": '
                '{"kty": "OKP", "crv": "Ed25519", "x": "short"}}]}'
            ),
            "public_key",
        ),
        ('{"v": 2, "users": []}', "v"),
    ],
    ids=["not_json", "bad_key", "unknown_version"],
)
def test_bad_registry_file_is_refused_in_one_line(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "users.json"
    p.write_text(content)
    with pytest.raises(RegistryError, match=match) as exc:
        UserRegistry.load(p)
    assert "\n" not in str(exc.value)


def test_duplicate_user_in_registry_is_refused(tmp_path: Path) -> None:
    pub = generate_keypair(tmp_path / "a.key", tmp_path / "a.pub.jwk")
    entry = {"user": "a", "role": "therapist", "public_key": pub}
    p = tmp_path / "users.json"
    p.write_text(json.dumps({"v": 1, "users": [entry, entry]}))
    with pytest.raises(RegistryError, match="twice"):
        UserRegistry.load(p)


def test_registry_from_config_users_skips_users_without_keys(tmp_path: Path) -> None:
    from types import SimpleNamespace

    pub = generate_keypair(tmp_path / "a.key", tmp_path / "a.pub.jwk")
    users = [SimpleNamespace(name="alice", role=Role.THERAPIST, public_key=pub),
             SimpleNamespace(name="local", role=Role.THERAPIST, public_key=None)]
    reg = UserRegistry.from_config_users(users)
    assert reg.lookup("alice") is not None and reg.lookup("local") is None
