"""Issue 11 (items 1, 7, 11): no single message on the command topic can stop
the console (and with it igrtd); non-finite times and numbers are refused with
the right code; commands carrying the MQTT retain flag are refused unread.

Verifier rules are proven on the verifier; the console's "never let one
message out" rule over a real Mosquitto with the production ACL."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import uuid
from typing import Any

import aiomqtt
import pytest
from joserfc import jws
from joserfc.jwk import OKPKey
from pydantic import BaseModel, ValidationError

from daemon.api import (
    Binding,
    JogRequest,
    MonitorStartRequest,
    ProposeRequest,
    SessionRequest,
)
from daemon.console.schemas import ARGS_MODELS, CommandClaims, topic
from daemon.console.tokens import (
    CommandRejected,
    CommandVerifier,
    MemoryReplayCache,
    sign_command,
)

from .conftest import ROOM, ConsoleHarness, Identities, console_client, serving

DEEP = '{"a":' + "[" * 5000 + "]" * 5000 + "}"  # the reproduction, ~10 KB


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jws(key: OKPKey, payload: str) -> str:
    """A compact JWS over an arbitrary payload text, validly signed by `key`."""
    registry = jws.JWSRegistry(algorithms=["Ed25519"])
    header = {"alg": "Ed25519", "typ": "igrt-cmd+jws"}
    return jws.serialize_compact(header, payload, key, registry=registry)


def _claims_text(**raw_values: str) -> str:
    """Claims JSON with some values spliced in verbatim (NaN, 1e400, ...)."""
    now = time.time()
    fields = {"v": "1", "cmd": '"status"', "args": "{}", "sub": '"alice"', "aud": f'"{ROOM}"',
              "iat": repr(now), "exp": repr(now + 10), "jti": f'"{uuid.uuid4().hex}"',
              "reply_to": '"console1"'}
    fields.update(raw_values)
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


@pytest.fixture
def verifier(identities: Identities) -> CommandVerifier:
    return CommandVerifier(identities.registry(), ROOM, MemoryReplayCache())


def _rejected(verifier: CommandVerifier, token: str | bytes) -> CommandRejected:
    with pytest.raises(CommandRejected) as info:
        verifier.verify(token.encode() if isinstance(token, str) else token)
    assert "\n" not in info.value.reason
    return info.value


# --- item 1: deep JSON, plain or signed -------------------------------------------


def test_deep_plain_json_is_refused_as_malformed_not_a_recursion_error(verifier) -> None:
    rej = _rejected(verifier, DEEP)
    assert rej.code == "malformed"
    assert "nesting depth" in rej.reason


def test_deep_json_as_jws_payload_is_refused_as_malformed(verifier, identities) -> None:
    rej = _rejected(verifier, _jws(identities.key("alice"), DEEP))
    assert rej.code == "malformed"
    assert "JWS payload refused" in rej.reason and "nesting depth" in rej.reason


def test_deep_json_as_jws_payload_without_a_registered_key_is_refused(verifier) -> None:
    rej = _rejected(verifier, _jws(OKPKey.generate_key("Ed25519"), DEEP))
    assert rej.code == "malformed"


def test_deep_jws_header_is_refused_before_the_jose_library_parses_it(verifier) -> None:
    header = '{"alg":"Ed25519","x":' + "[" * 150 + "]" * 150 + "}"
    rej = _rejected(verifier, f"{_b64(header)}.{_b64(_claims_text())}.c2ln")
    assert rej.code == "malformed"
    assert "JWS header refused" in rej.reason


def test_a_header_naming_alg_twice_is_refused(verifier) -> None:
    header = '{"alg":"Ed25519","alg":"none"}'
    rej = _rejected(verifier, f"{_b64(header)}.{_b64(_claims_text())}.")
    assert rej.code == "malformed"
    assert "duplicate key 'alg'" in rej.reason


def test_an_unexpected_error_inside_the_verifier_is_a_rejection_with_the_reply_topic(
    verifier, identities, monkeypatch
) -> None:
    def broken_lookup(user: str) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(verifier.registry, "lookup", broken_lookup)
    token = sign_command(identities.key("alice"), cmd="status", sub="alice", aud=ROOM,
                         reply_to="console1")
    rej = _rejected(verifier, token)
    assert rej.code == "internal"
    assert "RecursionError" in rej.reason
    assert rej.reply_to == "console1"


# --- item 7: non-finite times and numbers -----------------------------------------------


@pytest.mark.parametrize(
    "claim, literal",
    [("iat", "NaN"), ("exp", "NaN"), ("iat", "Infinity"), ("exp", "Infinity"),
     ("exp", "-Infinity"), ("iat", "1e400"), ("exp", "1e400"), ("exp", "1" + "0" * 400)],
)
def test_a_signed_token_with_a_non_finite_time_is_refused_as_malformed(
    verifier, identities, claim: str, literal: str
) -> None:
    rej = _rejected(verifier, _jws(identities.key("alice"), _claims_text(**{claim: literal})))
    assert rej.code == "malformed", rej.reason


def test_a_nan_exp_is_not_reported_as_replayed(verifier, identities) -> None:
    # The old verifier let NaN through every time check and then the replay
    # cache refused to remember it: code "replayed", the wrong story.
    rej = _rejected(verifier, _jws(identities.key("alice"), _claims_text(exp="NaN")))
    assert rej.code == "malformed"
    assert "finite" in rej.reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "1e400"])
def test_a_non_finite_number_in_args_is_refused(verifier, identities, literal: str) -> None:
    args = '{"axis":"lat","velocity":' + literal + "}"
    token = _jws(identities.key("sam"), _claims_text(cmd='"jog"', sub='"sam"', args=args))
    rej = _rejected(verifier, token)
    assert rej.code == "malformed"
    assert "finite numbers" in rej.reason


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_the_claims_model_refuses_non_finite_times(claim: str, value: float) -> None:
    now = time.time()
    claims = {"cmd": "status", "sub": "alice", "aud": ROOM, "iat": now, "exp": now + 10,
              "jti": uuid.uuid4().hex, "reply_to": "console1", claim: value}
    with pytest.raises(ValidationError, match="finite"):
        CommandClaims.model_validate(claims)


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_the_time_check_itself_refuses_a_nan_time(verifier, claim: str) -> None:
    # Second line of defence: a claims object that skipped validation.
    now = time.time()
    values = {"iat": now, "exp": now + 10, claim: math.nan}
    claims = CommandClaims.model_construct(cmd="status", args={}, sub="alice", aud=ROOM,
                                           jti=uuid.uuid4().hex, reply_to="console1", **values)
    with pytest.raises(CommandRejected) as info:
        verifier._check_time(claims, {})
    assert info.value.code == "malformed"
    assert f"{claim} is nan" in info.value.reason


def test_a_token_valid_for_a_year_is_refused_as_too_long(verifier, identities) -> None:
    token = sign_command(identities.key("alice"), cmd="status", sub="alice", aud=ROOM,
                         reply_to="console1", lifetime_s=365 * 24 * 3600.0)
    assert _rejected(verifier, token).code == "lifetime_too_long"


def _finite_violations() -> list[tuple[str, type[BaseModel], dict[str, Any]]]:
    binding = {"patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F",
               "imaging_session_uid": "I", "acquired_at": time.time()}
    propose = {"matrix": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]],
               "iso": [0.0, 0.0, 0.0], "patient_position": "HFS", "binding": binding}
    session = {"patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F",
               "iso": [0.0, 0.0, 0.0], "patient_position": "HFS", "manual_override": "typed for the test room"}
    cases = []
    for bad in (math.nan, math.inf):
        matrix = [row[:] for row in propose["matrix"]]
        matrix[0][3] = bad
        cases += [
            ("propose.matrix", ProposeRequest, {**propose, "matrix": matrix}),
            ("propose.iso", ProposeRequest, {**propose, "iso": [bad, 0.0, 0.0]}),
            ("propose.couch_at_imaging", ProposeRequest,
             {**propose, "couch_at_imaging": {"lat": bad}}),
            ("binding.acquired_at", Binding, {**binding, "acquired_at": bad}),
            ("open_session.iso", SessionRequest, {**session, "iso": [0.0, bad, 0.0]}),
            ("jog.velocity", JogRequest, {"axis": "lat", "velocity": bad}),
            ("monitor_start.markers", MonitorStartRequest, {"markers_mm": [[bad, 0.0, 0.0]]}),
            ("monitor_start.tolerance", MonitorStartRequest,
             {"markers_mm": [[0.0, 0.0, 0.0]], "tolerance_mm": bad}),
        ]
    return cases


@pytest.mark.parametrize("where, model, data", _finite_violations(),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(_finite_violations())])
def test_request_models_refuse_nan_and_infinity(
    where: str, model: type[BaseModel], data: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="finite"):
        model.model_validate(data)


def test_every_mqtt_args_model_refuses_nan() -> None:
    for name, model in ARGS_MODELS.items():
        assert model.model_config.get("allow_inf_nan") is False, name


# --- over a real broker: the console goes on ------------------------------------------


async def _raw_publish(broker: Any, payload: bytes | str, *, retain: bool = False,
                       account: str = "console1") -> None:
    async with aiomqtt.Client(broker.host, broker.port, username=account,
                              password=broker.creds[account]) as c:
        await c.publish(topic(ROOM, "cmd"), payload, qos=1, retain=retain)


async def _retained_on_cmd(broker: Any) -> list[bytes]:
    """What a new subscriber to the command topic is handed as retained."""
    got: list[bytes] = []
    async with aiomqtt.Client(broker.host, broker.port, username="igrtd",
                              password=broker.creds["igrtd"], identifier="probe") as c:
        await c.subscribe(topic(ROOM, "cmd"), qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for m in c.messages:
                    if m.retain:
                        got.append(bytes(m.payload))  # type: ignore[arg-type]
        except TimeoutError:
            pass
    return got


async def test_deep_json_on_the_command_topic_leaves_the_console_serving(
    served: ConsoleHarness, broker, identities
) -> None:
    await _raw_publish(broker, DEEP)
    await _raw_publish(broker, _jws(identities.key("alice"), DEEP))
    async with console_client(broker, identities) as c:
        result = await c.status()
    assert result["state"] == "IDLE"
    codes = [r["code"] for r in served.audit.rejections()]
    assert codes == ["malformed", "malformed"]
    assert not served.task.done()
    assert served.room.names() == ["status"]


async def test_an_exception_escaping_the_verifier_is_audited_and_the_console_goes_on(
    served: ConsoleHarness, broker, identities, monkeypatch
) -> None:
    real_verify = served.console.verifier.verify

    def exploding(payload: bytes) -> Any:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    monkeypatch.setattr(served.console.verifier, "verify", exploding)
    await _raw_publish(broker, DEEP)
    rejection = await served.audit.wait_rejection()
    assert rejection["code"] == "internal"
    assert "RecursionError" in rejection["reason"]
    monkeypatch.setattr(served.console.verifier, "verify", real_verify)
    async with console_client(broker, identities) as c:
        assert (await c.status())["state"] == "IDLE"
    assert not served.task.done()


async def test_a_room_method_failing_unexpectedly_is_answered_internal_and_audited(
    served: ConsoleHarness, broker, identities, monkeypatch
) -> None:
    async def broken(actor: Any) -> dict[str, Any]:
        raise RecursionError("deep")

    monkeypatch.setattr(served.room, "status", broken)
    async with console_client(broker, identities) as c:
        jti, token = c.sign("status")
        reply = await c.request_raw(token, jti)
        monkeypatch.undo()
        assert (await c.status())["state"] == "IDLE"
    assert (reply.ok, reply.code) == (False, "internal")
    faults = [d for e, _a, d in served.audit.records if e == "console.command_fault"]
    assert faults and faults[0]["jti"] == jti and "RecursionError" in faults[0]["reason"]


async def test_a_failing_reply_publish_does_not_end_the_console(
    served: ConsoleHarness, broker, identities, monkeypatch
) -> None:
    calls = {"n": 0}
    real_reply = served.console._dispatcher._reply

    async def reply_once_broken(console_id: str, msg: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("reply could not be encoded")
        await real_reply(console_id, msg)

    monkeypatch.setattr(served.console._dispatcher, "_reply", reply_once_broken)
    async with console_client(broker, identities) as c:
        await c.send_raw(c.sign("status")[1], None)
        async with asyncio.timeout(5):
            while not any(e == "console.fault" for e, _a, _d in served.audit.records):
                await asyncio.sleep(0.01)
        assert (await c.status())["state"] == "IDLE"
    assert not served.task.done()


# --- item 11: the retain flag ------------------------------------------------------------


async def test_a_retained_valid_command_found_at_start_is_refused_and_cleared(
    broker, identities, fake_room, audit
) -> None:
    token = sign_command(identities.key("alice"), cmd="confirm", sub="alice", aud=ROOM,
                         reply_to="console1", args={"proposal_id": "p1"})
    await _raw_publish(broker, token, retain=True)
    async with serving(broker, identities, fake_room, audit) as h:
        rejection = await h.audit.wait_rejection()
        async with asyncio.timeout(5):
            while not any(e == "console.retained_cleared" for e, _a, _d in h.audit.records):
                await asyncio.sleep(0.01)
        assert not h.task.done()
    assert rejection["code"] == "retained"
    assert fake_room.calls == []
    assert await _retained_on_cmd(broker) == []


async def test_a_retained_deep_json_found_at_start_is_refused_and_the_console_serves(
    broker, identities, fake_room, audit
) -> None:
    await _raw_publish(broker, DEEP, retain=True)
    async with serving(broker, identities, fake_room, audit) as h:
        rejection = await h.audit.wait_rejection()
        async with console_client(broker, identities) as c:
            assert (await c.status())["state"] == "IDLE"
    assert rejection["code"] == "retained"
    assert fake_room.names() == ["status"]


async def test_a_command_published_with_retain_while_serving_is_refused(
    served: ConsoleHarness, broker, identities
) -> None:
    # MQTT 3.1.1 would clear the flag on live delivery; igrtd subscribes with
    # MQTT 5 "retain as published", so the flag is seen and the command refused.
    token = sign_command(identities.key("alice"), cmd="confirm", sub="alice", aud=ROOM,
                         reply_to="console1", args={"proposal_id": "p1"})
    await _raw_publish(broker, token, retain=True)
    rejection = await served.audit.wait_rejection()
    assert rejection["code"] == "retained"
    assert "retain" in rejection["reason"]
    await asyncio.sleep(0.2)
    assert served.room.calls == []
    assert await _retained_on_cmd(broker) == []


async def test_igrtds_own_clearing_publish_is_not_audited_as_a_command(
    served: ConsoleHarness, broker, identities
) -> None:
    await _raw_publish(broker, b"not a command", retain=True)
    await served.audit.wait_rejection()
    await asyncio.sleep(0.5)
    assert [r["code"] for r in served.audit.rejections()] == ["retained"]


def test_claims_text_helper_builds_valid_json() -> None:
    # Guards the helper the non-finite tests rely on.
    assert json.loads(_claims_text())["cmd"] == "status"


def test_a_console_never_signs_a_non_finite_number(identities) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        sign_command(identities.key("sam"), cmd="jog", sub="sam", aud=ROOM, reply_to="console1",
                     args={"axis": "lat", "velocity": math.nan})


def test_the_console_client_reports_a_non_finite_argument_as_one_line(
    broker, identities
) -> None:
    from daemon.console.client import ConsoleError

    c = console_client(broker, identities, user="sam")
    with pytest.raises(ConsoleError, match="NaN and Infinity cannot be sent"):
        c.sign("jog", {"axis": "lat", "velocity": math.inf})
