"""Acceptance: every unauthentic, stale, misdirected, unauthorised, replayed or
malformed command is refused with a reason and an audit record, and none of
them reaches a RoomCommands method that could move anything."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from daemon.console.client import CommandRefused, ConsoleClient
from daemon.console.tokens import sign_command

from .conftest import ROOM, ConsoleHarness, Identities, console_client


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = time.time()
    c = {
        "v": 1, "cmd": "confirm", "args": {"proposal_id": "p1"}, "sub": "alice", "aud": ROOM,
        "iat": now, "exp": now + 10, "jti": uuid.uuid4().hex, "reply_to": "console1",
    }
    c.update(over)
    return c


def forged(ids: Identities) -> tuple[str, str]:
    mallory = OKPKey.generate_key("Ed25519")
    c = _claims()
    return c["jti"], sign_command(mallory, cmd="confirm", sub="alice", aud=ROOM,
                                  reply_to="console1", args={"proposal_id": "p1"}, jti=c["jti"])


def unknown_user(ids: Identities) -> tuple[str, str]:
    jti = uuid.uuid4().hex
    return jti, sign_command(OKPKey.generate_key("Ed25519"), cmd="confirm", sub="mallory",
                             aud=ROOM, reply_to="console1", args={"proposal_id": "p1"}, jti=jti)


def signed(user: str, cmd: str = "confirm", args: dict[str, Any] | None = None,
           **kw: Any) -> Callable[[Identities], tuple[str, str]]:
    def build(ids: Identities) -> tuple[str, str]:
        jti = kw.pop("jti", None) or uuid.uuid4().hex
        a = {"proposal_id": "p1"} if args is None and cmd == "confirm" else args
        extra = dict(kw)
        # Times relative to when the token is built, not when this module was imported:
        # a long suite run must not turn a future-dated token into a current one.
        offset = extra.pop("now_offset_s", None)
        if offset is not None:
            extra["now"] = time.time() + offset
        return jti, sign_command(ids.key(user), cmd=cmd, sub=user, aud=extra.pop("aud", ROOM),
                                 reply_to="console1", args=a, jti=jti, **extra)
    return build


def alg_none(ids: Identities) -> tuple[str, str]:
    c = _claims()
    header = _b64(json.dumps({"alg": "none"}).encode())
    return c["jti"], f"{header}.{_b64(json.dumps(c).encode())}."


def plain_json(ids: Identities) -> tuple[str, str]:
    c = _claims()
    return c["jti"], json.dumps(c)


def claims_missing_exp(ids: Identities) -> tuple[str, str]:
    c = _claims()
    del c["exp"]
    token = jws.serialize_compact({"alg": "Ed25519"}, json.dumps(c), ids.key("alice"),
                                  algorithms=["Ed25519"])
    return c["jti"], token


REJECTED_WITH_REPLY = {
    "forged_signature": (forged, "bad_signature"),
    "unknown_user": (unknown_user, "unknown_user"),
    "expired": (signed("alice", now_offset_s=-60, lifetime_s=10), "expired"),
    "future_iat": (signed("alice", now_offset_s=60), "not_yet_valid"),
    "wrong_room": (signed("alice", aud="room2"), "wrong_room"),
    "wrong_role_viewer_confirms": (signed("vera"), "forbidden"),
    "wrong_role_therapist_approves": (signed("alice", "approve", {"proposal_id": "p1"}), "forbidden"),
    "viewer_may_not_stop": (signed("vera", "stop", {"reason": "x"}), "forbidden"),
    "lifetime_too_long": (signed("alice", lifetime_s=3600), "lifetime_too_long"),
    "malformed_claims": (claims_missing_exp, "malformed"),
    "unsigned_alg_none": (alg_none, "unsigned"),
    "unsigned_plain_json": (plain_json, "unsigned"),
}


@pytest.mark.parametrize("case", sorted(REJECTED_WITH_REPLY))
async def test_bad_command_is_refused_with_reason_and_audit_and_reaches_nothing(
    case: str, served: ConsoleHarness, broker, identities
) -> None:
    build, code = REJECTED_WITH_REPLY[case]
    jti, token = build(identities)
    async with console_client(broker, identities) as c:
        reply = await c.request_raw(token, jti)
    assert not reply.ok
    assert reply.code == code
    assert reply.reason
    rejection = await served.audit.wait_rejection()
    assert rejection["code"] == code and rejection["reason"] == reply.reason
    assert served.room.calls == []


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"{not json", "malformed"),
        (b"\xff\xfe garbage", "malformed"),
        (b"a.b", "malformed"),
        (b"x" * 20_000, "oversized"),
    ],
    ids=["malformed_json", "binary_garbage", "two_segments", "oversized"],
)
async def test_unparseable_command_is_audited_and_reaches_nothing(
    payload: bytes, code: str, served: ConsoleHarness, broker, identities
) -> None:
    # No reply topic can be read from these safely, so the audit record is the answer.
    async with console_client(broker, identities) as c:
        await c.send_raw(payload, None)
        rejection = await served.audit.wait_rejection()
    assert rejection["code"] == code
    assert rejection["reason"]
    assert served.room.calls == []


async def test_oversized_reason_names_size_and_limit(served: ConsoleHarness, broker, identities) -> None:
    async with console_client(broker, identities) as c:
        await c.send_raw(b"x" * 20_000, None)
        rejection = await served.audit.wait_rejection()
    assert "20000 bytes" in rejection["reason"] and "16384" in rejection["reason"]


async def test_replayed_command_is_refused_and_runs_once(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities) as c:
        jti, token = c.sign("confirm", {"proposal_id": "p1"})
        first = await c.request_raw(token, jti)
        again = await c.request_raw(token, jti)
    assert first.ok
    assert (again.ok, again.code) == (False, "replayed")
    assert served.room.names() == ["confirm"]
    assert (await served.audit.wait_rejection())["code"] == "replayed"


async def test_valid_command_runs_as_registered_user_with_registry_role(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="bob") as c:
        result = await c.status()
    assert result == {"state": "IDLE", "actor": "bob", "role": "approver", "via": "mqtt:console1"}


async def test_a_role_claimed_in_the_token_is_refused_not_honoured(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="alice") as c:
        jti, token = c.sign("approve", {"proposal_id": "p1"}, extra_claims={"role": "approver"})
        reply = await c.request_raw(token, jti)
    assert (reply.ok, reply.code) == (False, "malformed")
    assert "role" in (reply.reason or "")
    assert served.room.calls == []


async def test_second_approval_by_the_confirming_user_is_refused(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="bob") as c:
        await c.confirm("p1")
        with pytest.raises(CommandRefused) as refused:
            await c.approve("p1")
    assert refused.value.code == "refused"
    assert "different user" in str(refused.value.reason)


async def test_second_approval_by_another_approver_is_accepted(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="alice") as therapist:
        await therapist.confirm("p1")
    async with console_client(broker, identities, user="bob", console="console2") as approver:
        assert (await approver.approve("p1"))["status"] == "approved"


async def test_refusal_by_room_commands_comes_back_as_reason(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="bob") as c:
        await c.confirm("p9")
        with pytest.raises(CommandRefused, match="different user"):
            await c.approve("p9")


async def test_stop_is_not_stuck_behind_a_slow_command(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities) as c:
        slow = await c.send("confirm", {"proposal_id": "slow"})
        result = await c.stop("patient moved")
        assert result == {"stopped": True}
        assert not slow.done()
        served.room.slow_gate.set()
        assert (await asyncio.wait_for(slow, 5)).ok
    assert served.room.names() == ["confirm", "stop"]


async def test_commands_from_one_console_run_in_arrival_order(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities) as c:
        futs = [await c.send("hold", {"proposal_id": "p1"}) for _ in range(5)]
        futs.append(await c.send("release"))
        await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert served.room.names() == ["hold"] * 5 + ["release"]


async def test_sign_command_rejects_nothing_it_signs_for_every_role(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="vera") as viewer:
        assert (await viewer.status())["role"] == "viewer"
    async with console_client(broker, identities, user="sam") as service:
        assert (await service.stop("service stop")) == {"stopped": True}


def test_console_client_refuses_a_reply_topic_with_wildcards(broker, identities) -> None:
    from daemon.console.client import ConsoleError

    with pytest.raises(ConsoleError, match="console id"):
        ConsoleClient(f"mqtt://{broker.host}:{broker.port}", ROOM, "alice",
                      identities.key_paths["alice"], "con/+/sole")
