"""Fuzz targets: each entry point that takes outside input, with the property it
must hold for ANY input.

The property is the same everywhere: the entry point either accepts the
input (and what it accepted is sane) or refuses it with its documented error
type and a one-line message; never another exception, never a
RecursionError; a refused input changes nothing. Each `check_*` raises
`FuzzFailure` (an AssertionError) when the property does not hold, so the
hypothesis tests, the corpus replay and the atheris harnesses share one
definition of "bug".

Each target also says how its inputs are stored as corpus files
(`Target.from_bytes` / `to_bytes`).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import gc
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey
from pydantic import BaseModel

# --------------------------------------------------------------------- failures


class FuzzFailure(AssertionError):
    """An input broke the property of its target."""


def _one_line(text: str, what: str) -> None:
    if "\n" in text or "\r" in text:
        raise FuzzFailure(f"{what} is not one line: {text[:300]!r}")
    if "Traceback" in text:
        raise FuzzFailure(f"{what} contains a traceback: {text[:300]!r}")


def _unexpected(entry: str, exc: BaseException) -> FuzzFailure:
    first = (str(exc).splitlines() or [""])[0][:200]
    return FuzzFailure(f"{entry} raised {type(exc).__name__}: {first}")


def _non_finite(value: Any, path: str = "") -> str | None:
    """Path of the first NaN/Infinity inside a parsed value, else None (iterative)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where or "(top)"
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}", x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return None


def _depth(value: Any) -> int:
    """Nesting depth of containers in a parsed value (iterative)."""
    deepest = 0
    stack: list[tuple[int, Any]] = [(0, value)]
    while stack:
        d, v = stack.pop()
        if isinstance(v, dict):
            deepest = max(deepest, d + 1)
            stack.extend((d + 1, x) for x in v.values())
        elif isinstance(v, list):
            deepest = max(deepest, d + 1)
            stack.extend((d + 1, x) for x in v)
    return deepest


# ------------------------------------------------------------------ strict JSON

STRICT_JSON_MAX_DEPTH = 32


def check_strict_json(data: bytes) -> None:
    """safety.strict_json.loads: a value or JsonInputError (one line); never RecursionError.

    Accepted values hold only finite numbers, are no deeper than the limit, and
    are what the standard parser reads from the same text.
    """
    from safety.strict_json import JsonInputError, loads

    try:
        value = loads(data, max_depth=STRICT_JSON_MAX_DEPTH, max_bytes=1 << 16)
    except JsonInputError as exc:
        _one_line(str(exc), "JsonInputError message")
        return
    except Exception as exc:  # any other type (RecursionError too) is the finding
        raise _unexpected("strict_json.loads", exc) from exc
    bad = _non_finite(value)
    if bad is not None:
        raise FuzzFailure(f"strict_json accepted a non-finite number at {bad}")
    depth = _depth(value)
    if depth > STRICT_JSON_MAX_DEPTH:
        raise FuzzFailure(f"strict_json accepted depth {depth} > {STRICT_JSON_MAX_DEPTH}")
    try:
        plain = json.loads(data)
    except (ValueError, RecursionError):
        raise FuzzFailure("strict_json accepted a document the json module refuses") from None
    if plain != value:
        raise FuzzFailure("strict_json read a different value than the json module")


# ------------------------------------------------------------- signed commands

ROOM = "room1"
NOW = 1_800_000_000.0  # the verifier's fixed clock, so stored tokens replay forever
_SEED = bytes(range(32))  # test-only key: public in this file on purpose
USERS = {"alice": "therapist", "bob": "approver", "vera": "viewer", "sam": "service"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_PRIVATE = Ed25519PrivateKey.from_private_bytes(_SEED)
_PUBLIC_X = _b64(_PRIVATE.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw))
TEST_PUBLIC_JWK = {"kty": "OKP", "crv": "Ed25519", "x": _PUBLIC_X}
TEST_KEY = OKPKey.import_key({**TEST_PUBLIC_JWK, "d": _b64(_SEED)})


def sign_compact(payload: bytes, header: bytes | None = None) -> bytes:
    """A compact JWS with a GOOD Ed25519 signature over any payload bytes.

    Written by hand (not joserfc) so that the payload can be anything: deep
    nesting, NaN, duplicate keys, not JSON at all. The signature is what a
    registered user's console would produce: only the verifier's reading of
    the payload stands between it and the room.
    """
    head = header if header is not None else b'{"alg":"Ed25519","typ":"igrt-cmd+jws"}'
    signing_input = _b64(head) + "." + _b64(payload)
    sig = _PRIVATE.sign(signing_input.encode())
    return (signing_input + "." + _b64(sig)).encode()


def make_verifier() -> tuple[Any, Any]:
    from daemon.console.tokens import CommandVerifier, MemoryReplayCache
    from daemon.console.users import UserEntry, UserRegistry

    entries = [
        UserEntry.model_validate({"user": u, "role": r, "public_key": TEST_PUBLIC_JWK})
        for u, r in USERS.items()
    ]
    cache = MemoryReplayCache(clock=lambda: NOW)
    verifier = CommandVerifier(UserRegistry(entries), ROOM, cache, clock=lambda: NOW)
    return verifier, cache


def _model_non_finite(model: BaseModel) -> str | None:
    return _non_finite(model.model_dump())


def check_mqtt_command(payload: bytes) -> None:
    """CommandVerifier.verify: a VerifiedCommand, or CommandRejected(code, one-line reason).

    A rejected command leaves the replay cache as it was. An accepted one is
    from a registered user, for this room, fresh by finite times, with a
    lifetime within the limit, and carries no NaN/Infinity anywhere.
    """
    from daemon.console.tokens import CommandRejected

    verifier, cache = make_verifier()
    before = dict(cache._seen)
    try:
        vc = verifier.verify(payload)
    except CommandRejected as exc:
        if not (isinstance(exc.code, str) and exc.code.replace("_", "").isalpha()):
            raise FuzzFailure(f"rejection code {exc.code!r} is not a machine code") from None
        _one_line(exc.reason, f"rejection reason ({exc.code})")
        if cache._seen != before:
            raise FuzzFailure(f"rejected command ({exc.code}) changed the replay cache") from None
        return
    except Exception as exc:  # any other type is the finding
        raise _unexpected("CommandVerifier.verify", exc) from exc
    c = vc.claims
    if vc.user.user not in USERS or c.sub != vc.user.user:
        raise FuzzFailure(f"accepted a command of {c.sub!r} as user {vc.user.user!r}")
    if c.aud != ROOM:
        raise FuzzFailure(f"accepted a command for room {c.aud!r}")
    if not (math.isfinite(c.iat) and math.isfinite(c.exp)):
        raise FuzzFailure(f"accepted non-finite times iat={c.iat} exp={c.exp}")
    if not 0 < c.exp - c.iat <= verifier.max_lifetime_s:
        raise FuzzFailure(f"accepted lifetime {c.exp - c.iat} s")
    skew = verifier.max_clock_skew_s
    if not (c.iat <= NOW + skew and NOW <= c.exp + skew):
        raise FuzzFailure(f"accepted a command outside its time window (iat={c.iat}, exp={c.exp})")
    bad = _model_non_finite(vc.args) or _non_finite(c.args)
    if bad is not None:
        raise FuzzFailure(f"accepted {c.cmd} args with a non-finite number at {bad}")


# ---------------------------------------------------------------- local socket

# alice is this OS account (peer credentials), so her plain requests get past
# identity to argument parsing; the others have no proof and are refused first.
LOCAL_USERS = [{"name": "alice", "role": "therapist", "local_uid": os.getuid()},
               {"name": "bob", "role": "approver"}, {"name": "sam", "role": "service"},
               {"name": "vic", "role": "viewer"}]
READ_ONLY = frozenset({"status", "interlocks", "monitor_status", "audit"})


class FakeService:
    """Stands in for RoomService behind the control socket; records what reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.audits: list[tuple[Any, ...]] = []

    def audit(self, *args: Any, **kw: Any) -> None:
        self.audits.append(args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*_args: Any, **_kw: Any) -> dict[str, Any]:
            self.calls.append(name)
            return {"state": "IDLE"} if name == "status" else {}

        return call


async def _exchange(sock: Path, lines: list[bytes], timeout: float = 5.0) -> list[bytes | None]:
    """Send each line on its own connection; the reply line, or None if the server hung up."""
    replies: list[bytes | None] = []
    for line in lines:
        reader, writer = await asyncio.open_unix_connection(str(sock), limit=1 << 22)
        try:
            writer.write(line if line.endswith(b"\n") else line + b"\n")
            await writer.drain()
            async with asyncio.timeout(timeout):
                reply = await reader.readline()
            replies.append(reply or None)
        except ConnectionError:
            replies.append(None)
        finally:
            writer.close()
    return replies


def check_reply_line(reply: bytes | None, what: str) -> dict[str, Any] | None:
    """A control-socket reply: one JSON object with ok, and a one-line error/code if not ok."""
    if reply is None:
        return None
    try:
        obj = json.loads(reply)
    except ValueError:
        raise FuzzFailure(f"{what}: reply is not JSON: {reply[:200]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise FuzzFailure(f"{what}: reply has no ok flag: {reply[:200]!r}")
    if not obj["ok"]:
        err, code = obj.get("error"), obj.get("code")
        if not isinstance(err, str) or not isinstance(code, str):
            raise FuzzFailure(f"{what}: refusal without error/code strings: {reply[:200]!r}")
        _one_line(err, f"{what}: error")
    return obj


def _is_json_object(line: bytes) -> bool:
    """Could any reader see a JSON object in this line? (lenient on purpose)"""
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


async def _check_local_line(line: bytes) -> None:
    from daemon.config import RoomConfig
    from daemon.control import ControlServer

    with tempfile.TemporaryDirectory(prefix="igrt-fuzz-") as tmp:
        cfg = RoomConfig.model_validate({
            "state_dir": tmp, "socket_path": f"{tmp}/c.sock", "couch": {"port": "/dev/null"},
            "users": LOCAL_USERS,
        })
        service = FakeService()
        server = ControlServer(service, cfg)
        await server.start()
        try:
            reply = (await _exchange(cfg.control_socket, [line]))[0]
            check_reply_line(reply, "control socket")
            if not _is_json_object(line.strip()) and service.calls:
                raise FuzzFailure(f"a line that is no JSON object reached {service.calls}")
            status = (await _exchange(cfg.control_socket, [
                json.dumps({"cmd": "status", "user": "alice", "args": {}}).encode()]))[0]
            if check_reply_line(status, "status after the fuzzed line") is None:
                raise FuzzFailure("control socket did not answer status after the fuzzed line")
            await asyncio.sleep(0.01)  # let the handlers see their clients hang up
        finally:
            await server.close()


def check_local_line(line: bytes) -> None:
    """ControlServer: every request line gets one JSON reply (ok, or error+code on one
    line) or, for an oversized line, a closed connection; the server answers the next
    client; a line that is not a JSON object reaches no RoomService method."""
    try:
        asyncio.run(_check_local_line(line))
    except FuzzFailure:
        raise
    except Exception as exc:  # any other type is the finding
        raise _unexpected("control socket", exc) from exc


# ----------------------------------------------------------------------- config


def base_config() -> dict[str, Any]:
    """A valid room configuration using every section, the seed of config mutations."""
    from safety.couch_model import CouchModel

    return {
        "room": "room1",
        "state_dir": "/var/lib/igrt",
        "couch": {"port": "/dev/ttyUSB0", "baudrate": 115200, "heartbeat_interval_s": 0.05,
                  "reply_timeout_s": 0.25, "link_timeout_s": 0.3},
        "couch_model": CouchModel.default().model_dump(mode="json"),
        "policy": {"tolerance_translation_mm": 1.0, "refuse_shift_mm": 30.0},
        "plc": {"host": "10.0.0.5", "port": 502, "poll_interval_s": 0.003,
                "heartbeat_stale_s": 0.1},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "username": "igrtd"},
        "motion": {"hold_timeout_s": 0.25, "target_validity_ms": 1500,
                   "arrival_tolerance_mm": 0.5},
        "binding": {"max_registration_age_s": 1800.0},
        "monitoring": {"frame_rate_hz": 10.0, "tolerance_mm": 3.0},
        "users": [{"name": "alice", "role": "therapist", "public_key": TEST_PUBLIC_JWK},
                  {"name": "bob", "role": "approver"}],
    }


# Plausibility bounds an accepted configuration must respect (issue 11 item 9).
MAX_REGISTRATION_AGE_S = 7 * 24 * 3600.0
MAX_BAUD = 4_000_000


def _bool_for_number(model: BaseModel, doc: Any, where: str = "") -> str | None:
    """Where the document gave true/false for a field whose model value is a number."""
    if not isinstance(doc, dict):
        return None
    for name in type(model).model_fields:
        if name not in doc:
            continue
        given, held = doc[name], getattr(model, name)
        path = f"{where}.{name}" if where else name
        if isinstance(given, bool) and isinstance(held, (int, float)) and not isinstance(held,
                                                                                         bool):
            return path
        if isinstance(held, BaseModel):
            found = _bool_for_number(held, given, path)
            if found:
                return found
        elif isinstance(held, (list, tuple)) and isinstance(given, list):
            for i, (h, g) in enumerate(zip(held, given)):
                if isinstance(h, BaseModel):
                    found = _bool_for_number(h, g, f"{path}[{i}]")
                elif isinstance(g, bool) and isinstance(h, (int, float)) and not isinstance(h,
                                                                                            bool):
                    found = f"{path}[{i}]"
                else:
                    found = None
                if found:
                    return found
    return None


def _startable(cfg: Any) -> None:
    """What igrtd builds from a config at start must not fail on an accepted config."""
    from daemon.console.users import RegistryError, UserRegistry
    from drivers.plc import RoomPlcClient

    if cfg.plc is not None:
        p = cfg.plc
        try:
            # As daemon.plc_link.open_plc builds it.
            RoomPlcClient(p.host, p.port, poll_interval_s=p.poll_interval_s,
                          idle_poll_interval_s=max(p.poll_interval_s, 0.02),
                          heartbeat_stale_s=p.heartbeat_stale_s)
        except ValueError as exc:
            raise FuzzFailure(f"--check-config accepted a PLC section igrtd refuses at start: "
                              f"{exc}") from None
    try:
        UserRegistry.from_config_users(cfg.users)
    except (RegistryError, ValueError) as exc:
        raise FuzzFailure(f"--check-config accepted users igrtd refuses at start: {exc}") from None


def check_config(text: bytes) -> None:
    """daemon.config.parse_config: a RoomConfig, or ConfigError with one-line problems.

    An accepted configuration has finite numbers only, no true/false where a
    number belongs, plausible values, and starts (PLC client, user keys).
    """
    from daemon.config import ConfigError, parse_config

    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = text.decode("latin-1")
    try:
        cfg = parse_config(decoded, Path("fuzz.json"))
    except ConfigError as exc:
        if not exc.problems:
            raise FuzzFailure("ConfigError with no problem listed") from None
        for p in exc.problems:
            _one_line(str(p), "config problem")
        return
    except Exception as exc:  # any other type is the finding
        raise _unexpected("parse_config", exc) from exc
    bad = _non_finite(cfg.model_dump())
    if bad is not None:
        raise FuzzFailure(f"config accepted a non-finite number at {bad}")
    try:
        doc = json.loads(decoded)
    except (ValueError, RecursionError):
        doc = None
    where = _bool_for_number(cfg, doc)
    if where is not None:
        raise FuzzFailure(f"config accepted true/false as the number {where}")
    if not cfg.couch.port:
        raise FuzzFailure("config accepted an empty couch.port")
    if not 0 < cfg.couch.baudrate <= MAX_BAUD:
        raise FuzzFailure(f"config accepted couch.baudrate {cfg.couch.baudrate}")
    if cfg.plc is not None and not cfg.plc.host:
        raise FuzzFailure("config accepted an empty plc.host")
    age = cfg.binding.max_registration_age_s
    if not 0 < age <= MAX_REGISTRATION_AGE_S:
        raise FuzzFailure(f"config accepted binding.max_registration_age_s {age} s")
    _startable(cfg)


# -------------------------------------------------------------------- REG files

_FOR_FIXED = "1.2.826.0.1.3680043.8.498.11"
_FOR_MOVING = "1.2.826.0.1.3680043.8.498.12"
_TMP = Path(tempfile.mkdtemp(prefix="igrt-fuzz-reg-"))
atexit.register(shutil.rmtree, _TMP, True)
_BASE_REG: bytes | None = None


def base_reg() -> bytes:
    """A valid rigid REG written by the project's own writer (cached)."""
    global _BASE_REG
    if _BASE_REG is None:
        import datetime as dt

        from imaging.dicom_reg import write_registration

        c, s = math.cos(0.02), math.sin(0.02)
        m = np.array([[c, -s, 0, 1.5], [s, c, 0, -2.0], [0, 0, 1, 3.25], [0, 0, 0, 1]])
        path = _TMP / "base.dcm"
        write_registration(path, m, patient_id="PAT-1", patient_name="Fuzz^Patient",
                           fixed_frame_of_reference_uid=_FOR_FIXED,
                           moving_frame_of_reference_uid=_FOR_MOVING,
                           study_uid="1.2.826.0.1.3680043.8.498.13",
                           series_uid="1.2.826.0.1.3680043.8.498.14",
                           content_datetime=dt.datetime(2026, 1, 2, 3, 4, 5))
        _BASE_REG = path.read_bytes()
    return _BASE_REG


class _Collect(logging.Handler):
    """Keeps the WARNING and worse records a library logs (they reach the user's terminal)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_reg_file(data: bytes) -> None:
    """imaging.dicom_reg.read_registration: a rigid record, or ValueError (one line).

    No other exception and no warning escapes (a hostile file gives one line,
    not pydicom chatter); an accepted matrix is finite and rigid.
    """
    from imaging.dicom_reg import read_registration

    path = _TMP / "fuzz.dcm"
    path.write_bytes(data)
    logged = _Collect()
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.addHandler(logged)
    # Garbage of earlier tests collected now, not inside the capture: an unclosed
    # event loop of another test, finalised there, read as this reader's warning.
    gc.collect()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rec = read_registration(path)
            except ValueError as exc:
                _one_line(str(exc), "REG refusal")
                rec = None
            except Exception as exc:  # any other type is the finding
                raise _unexpected("read_registration", exc) from exc
    finally:
        pydicom_log.removeHandler(logged)
    if caught:
        first = caught[0]
        raise FuzzFailure(f"read_registration let a warning escape: {first.category.__name__}: "
                          f"{str(first.message).splitlines()[0][:200]}")
    if logged.records:
        raise FuzzFailure(f"read_registration let pydicom log: "
                          f"{logged.records[0].getMessage().splitlines()[0][:200]}")
    if rec is not None:
        m = rec.matrix
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise FuzzFailure("read_registration accepted a non-finite matrix")
        r = m[:3, :3]
        if np.abs(r @ r.T - np.eye(3)).max() > 1e-3 or np.linalg.det(r) <= 0:
            raise FuzzFailure("read_registration accepted a non-rigid matrix")


# ------------------------------------------------------------------ couch frames


def _frame_bytes(f: Any) -> int:
    from drivers.couch_protocol import OVERHEAD

    return OVERHEAD + len(f.payload)


def check_couch_frames(data: bytes, chunk: int = 0) -> None:
    """drivers.couch_protocol.FrameDecoder + decode_message on any byte stream.

    Never raises; every byte is accounted for exactly once (in a frame or a
    DecodeError); chunking does not change the frames found; a frame decodes
    to a message or MessageError, and a decoded message re-encodes to the very
    bytes it came from. The host driver (CouchClient) survives the same bytes
    and reports every well-formed STATUS frame.
    """
    from drivers import couch_protocol as cp

    try:
        whole = cp.FrameDecoder()
        out = whole.feed(data) + whole.flush()
        pieces = cp.FrameDecoder()
        step = chunk if chunk > 0 else 1
        out2: list[Any] = []
        for i in range(0, len(data), step):
            out2 += pieces.feed(data[i:i + step])
        out2 += pieces.flush()
        prio = cp.FrameDecoder(frozenset({cp.MsgType.STOP}))
        for i in range(0, len(data), step):
            prio.feed(data[i:i + step])
        prio.flush()
    except Exception as exc:  # any other type is the finding
        raise _unexpected("FrameDecoder", exc) from exc
    # The host driver on the same bytes: it must survive them and report every STATUS.
    # It never flushes: a frame hidden behind a truncated one is found once the
    # stream goes on (the next bytes complete the bogus frame, its CRC fails, the
    # scan restarts), so the stream goes on here with a frame's worth of non-SOF bytes.
    from drivers.couch import CouchClient, CouchStatus

    driver = CouchClient("/dev/null", heartbeat_interval_s=0)
    events: list[Any] = []
    driver.add_listener(events.append)
    try:
        driver._on_bytes(data)
        driver._on_bytes(bytes(cp.OVERHEAD + cp.MAX_PAYLOAD))
    except Exception as exc:  # any other type is the finding
        raise _unexpected("CouchClient rx", exc) from exc
    statuses = [x for x in out if isinstance(x, cp.Frame) and x.type == cp.MsgType.STATUS
                and len(x.payload) == cp.PAYLOAD_LEN[cp.MsgType.STATUS]]
    reported = [e for e in events if isinstance(e, CouchStatus)]
    if len(reported) < len(statuses):
        raise FuzzFailure(f"driver reported {len(reported)} of {len(statuses)} STATUS frames")
    for result in (out, out2):
        used = sum(_frame_bytes(x) if isinstance(x, cp.Frame) else x.nbytes for x in result)
        if used != len(data):
            raise FuzzFailure(f"decoder accounted for {used} of {len(data)} bytes")
    frames = [x for x in out if isinstance(x, cp.Frame)]
    if frames != [x for x in out2 if isinstance(x, cp.Frame)]:
        raise FuzzFailure(f"feeding {step} byte(s) at a time found other frames than one feed")
    for f in frames:
        if f.payload and len(f.payload) > cp.MAX_PAYLOAD:
            raise FuzzFailure(f"frame with a {len(f.payload)}-byte payload")
        try:
            msg = cp.decode_message(f)
        except cp.MessageError as exc:
            _one_line(str(exc), "MessageError")
            continue
        except Exception as exc:  # any other type is the finding
            raise _unexpected("decode_message", exc) from exc
        again = cp.encode(f.seq, msg)
        if again != cp.encode_raw(f.seq, f.type, f.payload):
            raise FuzzFailure(f"{type(msg).__name__} does not re-encode to its own frame")


def check_mutated_frame(frame: bytes, offset: int, value: int) -> None:
    """One byte of a valid frame changed (inside LEN..CRC): the decoder never hands
    out a frame with other content (CRC-16 catches every single-byte error)."""
    from drivers import couch_protocol as cp

    if not 2 <= offset < len(frame) or frame[offset] == value:
        return
    bad = bytearray(frame)
    bad[offset] = value
    dec = cp.FrameDecoder()
    out = dec.feed(bytes(bad)) + dec.flush()
    frames = [x for x in out if isinstance(x, cp.Frame)]
    if frames:
        raise FuzzFailure(f"a corrupted frame was accepted: {bytes(bad).hex()}")


# ----------------------------------------------------------------- PLC registers

def _map() -> tuple[int, int]:
    from drivers.plc import REGISTER_MAP_VERSION, STATUS_BLOCK_COUNT

    return STATUS_BLOCK_COUNT, REGISTER_MAP_VERSION


# The register map the driver speaks (docs/protocols/room-plc.md): the status
# block's length and map version come from the driver, so a map change cannot
# leave this target fuzzing blocks that are all link faults.
STATUS_BLOCK, MAP_VERSION = _map()


@dataclass(frozen=True)
class PlcJudgement:
    link_ok: bool
    open: list[str]
    parked: bool
    arms_moving: bool
    motion_enable: bool
    positions: dict[str, float | None]
    fault_code: int | None
    gantry_deg: float | None

    @property
    def judged_safe(self) -> bool:
        """Would igrtd let the couch move on this picture? (the MotionGate also needs
        the motion enable pressed: hold-to-run at the PLC, whose opening counter
        counts its releases)"""
        return (self.link_ok and not self.open and self.parked and not self.arms_moving
                and self.motion_enable)


class _Resp:
    def __init__(self, regs: list[int]) -> None:
        self.registers = regs

    def isError(self) -> bool:  # pymodbus spells it so
        return False


class _FakeModbus:
    """Answers read_holding_registers with the given blocks, then stops the poll loop."""

    def __init__(self, plc: Any, blocks: list[list[int]]) -> None:
        self._plc = plc
        self._blocks = list(blocks)

    async def read_holding_registers(self, address: int, *, count: int,
                                     device_id: int) -> _Resp:
        regs = self._blocks.pop(0)
        if not self._blocks:
            self._plc._stopping = True
        return _Resp(regs)


def safe_block(heartbeat: int = 1) -> list[int]:
    """A status block of a healthy room: every interlock closed, arms parked, no fault,
    no opening counted."""
    return [0b00111111, heartbeat, 0, 0, 0, 0, MAP_VERSION, 0, 0, 0]


async def _judge(regs: list[int]) -> PlcJudgement:
    from daemon.plc_link import RoomInterlocks
    from drivers.plc import RoomPlcClient

    client = RoomPlcClient("127.0.0.1", 5020, poll_interval_s=0.0005)
    # The fuzzed block follows a healthy one with another heartbeat, so the
    # link is fresh: what igrtd decides comes from the fuzzed values alone.
    first = safe_block((regs[1] + 1) % 65536)
    client._client = _FakeModbus(client, [first, list(regs)])
    try:
        await client._poll_connected()
        snap = client.snapshot()
    finally:
        if client._watchdog is not None:
            client._watchdog.cancel()
    # Judged the way igrtd's MotionGate asks: interlocks, arms, hold-to-run.
    room = RoomInterlocks(client)
    parked, moving = room.arms_state(snap)
    return PlcJudgement(
        link_ok=snap.link_ok, open=room.open_interlocks(snap),
        parked=parked, arms_moving=moving, motion_enable=room.motion_enable_pressed(snap),
        positions=dict(snap.arm_position_pct), fault_code=snap.fault_code,
        gantry_deg=snap.gantry_deg,
    )


def judge_registers(regs: list[int]) -> PlcJudgement:
    return asyncio.run(_judge(regs))


def check_plc_registers(regs: list[int]) -> None:
    """The PLC driver's reading of a status block and igrtd's judgement of it.

    Never raises. Positions are reported as read (value / 10 %) or not at all,
    never clamped; the gantry angle as read (value / 100 deg) when in 0..35999,
    else not at all. A block judged safe for couch motion is consistent with the
    register map: fault code 0, arm positions within 0..1000, gantry angle
    within 0..35999.
    """
    if len(regs) != STATUS_BLOCK or not all(0 <= r <= 0xFFFF for r in regs):
        raise ValueError(f"a status block is {STATUS_BLOCK} registers of 0..65535")
    try:
        j = judge_registers(regs)
    except Exception as exc:  # any other type is the finding
        raise _unexpected("PLC status decode", exc) from exc
    if regs[6] != MAP_VERSION and j.link_ok:
        raise FuzzFailure(f"map version {regs[6]} read as a healthy link")
    for arm, reg in (("kv_source", regs[3]), ("detector", regs[4])):
        pct = j.positions.get(arm)
        if pct is not None and not math.isclose(pct, reg / 10.0):
            raise FuzzFailure(f"{arm} position register {reg} reported as {pct} % (clamped)")
    gantry = regs[9]
    if j.gantry_deg is not None and (gantry > 35999 or not math.isclose(j.gantry_deg,
                                                                         gantry / 100.0)):
        raise FuzzFailure(f"gantry angle register {gantry} reported as {j.gantry_deg} deg")
    if not j.judged_safe:
        return
    if regs[2] != 0:
        raise FuzzFailure(f"fault code {regs[2]} judged safe for motion")
    # The block before it counted no opening: any counted opening since then
    # means an interlock opened between the two reads.
    if regs[7] != 0 or regs[8] != 0:
        raise FuzzFailure(f"opening counters {regs[7]:#06x}/{regs[8]:#06x} changed since the "
                          "previous read, yet judged safe for motion")
    for arm, reg in (("kv_source", regs[3]), ("detector", regs[4])):
        if reg > 1000:
            raise FuzzFailure(f"{arm} position register {reg} (range 0..1000) judged safe")
    if gantry > 35999:
        raise FuzzFailure(f"gantry angle register {gantry} (range 0..35999) judged safe")


def check_plc_reserved_bits(regs: list[int]) -> None:
    """Status bits 8..15 are reserved and read 0: a block with one set is not the
    documented map, so it must not be judged safe."""
    j = judge_registers(regs)
    if j.judged_safe and regs[0] >> 8:
        raise FuzzFailure(f"status word 0x{regs[0]:04x} with reserved bits set judged safe")


def plc_from_bytes(data: bytes) -> list[int]:
    """Corpus files hold a JSON list of the status block's registers; raw bytes are read as
    big-endian words."""
    try:
        regs = json.loads(data)
        if isinstance(regs, list) and len(regs) == STATUS_BLOCK:
            return [int(r) & 0xFFFF for r in regs]
    except ValueError:
        pass
    raw = (bytes(data) + bytes(2 * STATUS_BLOCK))[: 2 * STATUS_BLOCK]
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


# ---------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[Any], None]
    from_bytes: Callable[[bytes], Any]
    to_bytes: Callable[[Any], bytes]
    suffix: str


def _same(b: bytes) -> bytes:
    return bytes(b)


TARGETS: dict[str, Target] = {
    t.name: t for t in (
        Target("strict_json", check_strict_json, _same, _same, ".json"),
        Target("mqtt_command", check_mqtt_command, _same, _same, ".bin"),
        Target("local_line", check_local_line, _same, _same, ".line"),
        Target("config", check_config, _same, _same, ".json"),
        Target("reg_file", check_reg_file, _same, _same, ".dcm"),
        Target("couch_frames", check_couch_frames, _same, _same, ".bin"),
        Target("plc_registers", check_plc_registers, plc_from_bytes,
               lambda regs: (json.dumps(list(regs)) + "\n").encode(), ".json"),
    )
}

CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus_files(target: str) -> Iterator[Path]:
    d = CORPUS / target
    if d.is_dir():
        yield from sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
