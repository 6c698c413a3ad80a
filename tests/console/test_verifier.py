"""CommandVerifier without a broker: what is accepted, and every refusal's code."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from daemon import commands
from daemon.api import Role
from daemon.console import roles
from daemon.console.schemas import ARGS_MODELS
from daemon.console.tokens import (
    CommandRejected,
    CommandVerifier,
    MemoryReplayCache,
    sign_command,
)

from .conftest import ROOM, Identities

NOW = 1_800_000_000.0


@pytest.fixture
def verifier(identities: Identities) -> CommandVerifier:
    return CommandVerifier(identities.registry(), ROOM, MemoryReplayCache(lambda: NOW),
                           clock=lambda: NOW)


def token(ids: Identities, user: str = "alice", cmd: str = "confirm", **kw: Any) -> bytes:
    args = kw.pop("args", {"proposal_id": "p1"} if cmd in ("confirm", "approve", "hold") else {})
    return sign_command(
        ids.key(user), cmd=cmd, sub=kw.pop("sub", user), aud=kw.pop("aud", ROOM),
        reply_to=kw.pop("reply_to", "console1"), args=args, now=kw.pop("now", NOW), **kw,
    ).encode()


def rejection(verifier: CommandVerifier, payload: bytes) -> CommandRejected:
    with pytest.raises(CommandRejected) as exc:
        verifier.verify(payload)
    return exc.value


def test_valid_command_is_accepted_with_registry_user_and_role(verifier, identities) -> None:
    vc = verifier.verify(token(identities, "bob", "approve"))
    assert (vc.user.user, vc.user.role, vc.cmd) == ("bob", Role.APPROVER, "approve")
    assert vc.args.model_dump() == {"proposal_id": "p1"}


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
def test_legacy_eddsa_alg_name_is_accepted(verifier, identities) -> None:
    claims = {"v": 1, "cmd": "status", "args": {}, "sub": "alice", "aud": ROOM, "iat": NOW,
              "exp": NOW + 5, "jti": uuid.uuid4().hex, "reply_to": "console1"}
    t = jws.serialize_compact({"alg": "EdDSA"}, json.dumps(claims), identities.key("alice"),
                              algorithms=["EdDSA"])
    assert verifier.verify(t.encode()).cmd == "status"


def test_command_within_clock_skew_is_accepted(verifier, identities) -> None:
    assert verifier.verify(token(identities, now=NOW + 1.5)).cmd == "confirm"
    assert verifier.verify(token(identities, now=NOW - 11.5, lifetime_s=10)).cmd == "confirm"


@pytest.mark.parametrize(
    "kw, code",
    [
        ({"now": NOW + 2.5}, "not_yet_valid"),
        ({"now": NOW - 12.5, "lifetime_s": 10}, "expired"),
        ({"lifetime_s": 31}, "lifetime_too_long"),
        ({"lifetime_s": -1}, "malformed"),
        ({"aud": "room2"}, "wrong_room"),
        ({"args": {"proposal_id": "p1", "force": True}}, "bad_args"),
        ({"args": {}}, "bad_args"),
        ({"reply_to": "a/b"}, "malformed"),
        ({"jti": "short"}, "malformed"),
    ],
    ids=["future_iat", "expired", "too_long", "exp_before_iat", "wrong_room", "extra_arg",
         "missing_arg", "reply_to_with_slash", "short_jti"],
)
def test_bad_claims_are_refused(verifier, identities, kw, code) -> None:
    assert rejection(verifier, token(identities, **kw)).code == code


def test_forged_signature_is_refused_before_claims_are_trusted(verifier, identities) -> None:
    t = sign_command(OKPKey.generate_key("Ed25519"), cmd="confirm", sub="alice", aud="room2",
                     reply_to="console1", args={"proposal_id": "p1"}, now=NOW)
    rej = rejection(verifier, t.encode())
    assert rej.code == "bad_signature"  # not wrong_room: nothing unsigned is believed
    assert "alice" in rej.reason


def test_tampered_payload_breaks_the_signature(verifier, identities) -> None:
    h, _p, s = token(identities).decode().split(".")
    other = token(identities, args={"proposal_id": "p2"}).decode().split(".")[1]
    assert rejection(verifier, f"{h}.{other}.{s}".encode()).code == "bad_signature"


def test_unknown_user_is_refused(verifier, identities) -> None:
    assert rejection(verifier, token(identities, sub="mallory")).code == "unknown_user"


def test_key_of_one_user_does_not_sign_for_another(verifier, identities) -> None:
    assert rejection(verifier, token(identities, "alice", sub="bob")).code == "bad_signature"


@pytest.mark.parametrize(
    "user, cmd",
    [("vera", "stop"), ("vera", "confirm"), ("vera", "hold"), ("alice", "approve"),
     ("sam", "confirm"), ("sam", "approve")],
)
def test_role_table_refuses(verifier, identities, user, cmd) -> None:
    rej = rejection(verifier, token(identities, user, cmd, args=_args(cmd)))
    assert rej.code == "forbidden" and f"may not {cmd}" in rej.reason


@pytest.mark.parametrize(
    "user, cmd",
    # sam (service) may send hold: RoomService lets a service user hold QA moves only
    # (tests/rules/test_qa_rules.py::test_a_service_user_holds_qa_moves_only).
    [("vera", "status"), ("vera", "interlocks"), ("alice", "stop"), ("bob", "stop"),
     ("sam", "stop"), ("sam", "reset"), ("alice", "hold"), ("bob", "approve"), ("bob", "confirm"),
     ("sam", "hold")],
)
def test_role_table_allows(verifier, identities, user, cmd) -> None:
    assert verifier.verify(token(identities, user, cmd, args=_args(cmd))).cmd == cmd


def _args(cmd: str) -> dict[str, Any]:
    return {"confirm": {"proposal_id": "p1"}, "approve": {"proposal_id": "p1"},
            "hold": {"proposal_id": "p1"}, "stop": {"reason": "x"}}.get(cmd, {})


def test_the_console_role_table_is_the_registry_s() -> None:
    assert roles.ALLOWED_ROLES is commands.ALLOWED_ROLES
    assert set(ARGS_MODELS) == set(roles.ALLOWED_ROLES)


def test_replay_is_refused_and_only_accepted_commands_use_up_a_jti(verifier, identities) -> None:
    t = token(identities, jti="jti-0000001")
    wrong_role = token(identities, "vera", jti="jti-0000002")
    assert rejection(verifier, wrong_role).code == "forbidden"
    verifier.verify(t)
    assert rejection(verifier, t).code == "replayed"
    # A rejected command did not burn its jti.
    assert verifier.verify(token(identities, jti="jti-0000002")).cmd == "confirm"


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
def test_unsigned_commands_are_refused(verifier, identities) -> None:
    claims = {"cmd": "confirm", "sub": "alice", "reply_to": "console1", "jti": "j" * 10}
    assert rejection(verifier, json.dumps(claims).encode()).code == "unsigned"
    h = jws.serialize_compact({"alg": "none"}, json.dumps(claims), None, algorithms=["none"])
    rej = rejection(verifier, h.encode())
    assert rej.code == "unsigned" and rej.reply_to == "console1"


def test_hmac_signed_command_is_refused(verifier, identities) -> None:
    from joserfc.jwk import OctKey

    claims = {"cmd": "confirm", "sub": "alice", "reply_to": "console1"}
    t = jws.serialize_compact({"alg": "HS256"}, json.dumps(claims), OctKey.generate_key(256))
    assert rejection(verifier, t.encode()).code == "bad_alg"


def test_unexpected_header_fields_are_refused(verifier, identities) -> None:
    claims = {"v": 1, "cmd": "status", "args": {}, "sub": "alice", "aud": ROOM, "iat": NOW,
              "exp": NOW + 5, "jti": uuid.uuid4().hex, "reply_to": "console1"}
    t = jws.serialize_compact({"alg": "Ed25519", "jku": "https://x"}, json.dumps(claims),
                              identities.key("alice"), algorithms=["Ed25519"])
    assert rejection(verifier, t.encode()).code == "malformed"


def test_oversized_payload_is_refused_unread(verifier) -> None:
    rej = rejection(verifier, b"{" + b" " * 16_384)
    assert rej.code == "oversized" and rej.reply_to is None


def test_reply_topic_from_an_unverified_message_must_be_a_plain_console_id(verifier) -> None:
    body = {"cmd": "stop", "sub": "alice", "reply_to": "#"}
    assert rejection(verifier, json.dumps(body).encode()).reply_to is None


@pytest.mark.parametrize("payload", [b"", b"   ", b"{", b"[1,2]", b"a.b.c", b"\x00\x01", b"e30.e30.e30"])
def test_garbage_is_malformed_or_unsigned_never_an_exception(verifier, payload) -> None:
    assert rejection(verifier, payload).code in ("malformed", "unsigned")


def test_real_store_replay_cache_survives_reopening(identities, tmp_path: Path) -> None:
    from daemon.store import CorrectionStore

    t = token(identities)
    with CorrectionStore(tmp_path / "s.db") as store:
        v = CommandVerifier(identities.registry(), ROOM, store, clock=lambda: NOW)
        v.verify(t)
    with CorrectionStore(tmp_path / "s.db") as store:
        v = CommandVerifier(identities.registry(), ROOM, store, clock=lambda: NOW)
        assert rejection(v, t).code == "replayed"


@pytest.mark.parametrize("dated", [NOW + 3600.0, NOW - 3600.0], ids=["future", "expired"])
def test_a_stop_dated_outside_the_time_window_is_accepted_and_says_why(
        verifier, identities, dated) -> None:
    """A console whose clock is off must still stop the couch (docs/console-api.md)."""
    vc = verifier.verify(token(identities, "alice", "stop", args={"reason": ""}, now=dated))
    assert vc.cmd == "stop"
    assert vc.time_note is not None and vc.time_note.split(":")[0] in ("not_yet_valid", "expired")


def test_a_stop_accepted_outside_its_time_window_still_runs_once(verifier, identities) -> None:
    t = token(identities, "alice", "stop", args={"reason": ""}, now=NOW - 3600.0)
    verifier.verify(t)
    assert rejection(verifier, t).code == "replayed"


def test_a_stop_with_a_lifetime_beyond_the_limit_is_still_refused(verifier, identities) -> None:
    t = token(identities, "alice", "stop", args={"reason": ""}, lifetime_s=31)
    assert rejection(verifier, t).code == "lifetime_too_long"
