"""Hypothesis strategies for igrt's outside inputs: JSON documents (valid and
hostile), signed and unsigned console commands, local-socket request lines,
room configurations, REG files, couch serial frames and PLC status blocks.

Hostile values are the classes that broke igrt before (issue 11): nesting far
beyond any limit, NaN/Infinity/1e400, huge strings and numbers, wrong types,
duplicate keys, and valid signatures over any of these.
"""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

from hypothesis import strategies as st

from . import jsontext
from .jsontext import Obj, Raw
from .targets import NOW, ROOM, USERS, base_config, base_reg, safe_block, sign_compact

# ------------------------------------------------------------------ JSON values

HOSTILE_NUMBERS = [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e400"),
                   Raw("1e308"), Raw("-1e308"), Raw("4.9e-324"), Raw("-0"), Raw("1" * 5000),
                   Raw("0.1e99999"), Raw("1E+2"), 2**63, -(2**63) - 1, 2**1024]
HOSTILE_TOKENS = [Raw("nan"), Raw("inf"), Raw("tru"), Raw("01"), Raw("+1"), Raw(".5"),
                  Raw("1."), Raw("0x10"), Raw("'x'"), Raw('"\\ud800"'), Raw('"\\x41"')]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Ordinary JSON values (what json.dumps could write), nested a few levels."""
    return st.recursive(
        json_scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=max_leaves,
    )


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    """Brackets nested far past any limit, in the shapes that killed igrtd."""
    depth = draw(st.sampled_from([33, 65, 200, 1000, 5000, 20000]))
    shape = draw(st.sampled_from(["array", "object", "mixed", "unclosed", "in_string"]))
    if shape == "array":
        return jsontext.deep_array_doc(depth)
    if shape == "object":
        return jsontext.deep_object_doc(depth)
    if shape == "mixed":
        return "{" + '"a":[{"b":' * (depth // 2) + "1" + "}]" * (depth // 2) + "}"
    if shape == "unclosed":
        return '{"a":' + "[" * depth
    # brackets inside a string are not nesting; the document itself is shallow
    return json.dumps({"a": "[" * depth + "{" * depth})


def hostile_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(HOSTILE_NUMBERS + HOSTILE_TOKENS),
        st.sampled_from([True, False, None, "", [], {}, "x" * 100_000, 0, -1, 1e-300]),
        st.builds(lambda d: Raw(jsontext.deep_array_doc(d)[5:-1]),
                  st.sampled_from([70, 1000, 5000])),
        json_values(6),
    )



# Built once: hypothesis validates a strategy on first use, which costs far more
# than drawing from it, so composites below draw from these shared instances.
JSON_VALUES = json_values()
JSON_SMALL = json_values(6)
JSON_TINY = json_values(3)
HOSTILE = hostile_values()
HOSTILE_OR_JSON = st.one_of(HOSTILE, json_values(12))
KEYS = st.text(max_size=6)
NEW_KEYS = st.text(min_size=1, max_size=8)
PIECES = st.sampled_from(['"', "\\", "[", "]", "{", "}", ",", ":", "\x00", "\ud7ff", "e9", "-",
                          " "])


@st.composite
def hostile_documents(draw: st.DrawFn) -> str:
    """A JSON object that is often wrong: hostile values, duplicate keys, deep nesting."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(DEEP_NESTING)
    pairs: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 5))):
        pairs.append((draw(KEYS), draw(HOSTILE_OR_JSON)))
    if kind == 1 and pairs:
        pairs.append((pairs[0][0], draw(JSON_TINY)))  # duplicate key
    return jsontext.dumps(Obj(tuple(pairs)))


DEEP_NESTING = deep_nesting()
HOSTILE_DOCUMENTS = hostile_documents()
BINARY = st.binary(max_size=200)
JSONISH_TEXT = st.text(alphabet='[]{}",:\\ 0123456789.eE+-ntrufalsNIy', max_size=200)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"])


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> str:
    """`text` with a few characters inserted, deleted or replaced (syntax damage)."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 2))
        i = draw(st.integers(0, len(chars)))
        piece = draw(PIECES)
        if op == 0:
            chars.insert(i, piece)
        elif chars:
            i = min(i, len(chars) - 1)
            if op == 1:
                del chars[i]
            else:
                chars[i] = piece
    return "".join(chars)


@st.composite
def json_bytes(draw: st.DrawFn) -> bytes:
    """Anything a JSON reader might be given: valid, hostile, damaged, not text."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        text = json.dumps(draw(JSON_VALUES))
    elif kind == 1:
        text = draw(HOSTILE_DOCUMENTS)
    elif kind == 2:
        text = draw(DEEP_NESTING)
    elif kind == 3:
        text = draw(mutated_text(json.dumps(draw(JSON_VALUES))))
    elif kind == 4:
        return draw(BINARY)
    else:
        text = draw(JSONISH_TEXT)
    encoding = draw(ENCODINGS)
    return text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else
                       "replace")


# ------------------------------------------------------------- console commands

COMMANDS = ["status", "propose", "confirm", "approve", "hold", "release", "stop", "reset",
            "interlocks", "open_session", "close_session", "record_imaging", "register",
            "enter_service", "exit_service", "jog", "diag", "monitor_start", "monitor_stop",
            "monitor_status", "arms"]
CLAIM_NAMES = ["v", "cmd", "args", "sub", "aud", "iat", "exp", "jti", "reply_to"]

PROPOSE_ARGS = {
    "matrix": [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 1.0, -1.0],
               [0.0, 0.0, 0.0, 1.0]],
    "iso": [8.0, -12.0, 20.0], "patient_position": "HFS",
    "binding": {"patient_id": "PAT-1", "plan_uid": "PLAN-1", "frame_of_reference_uid": "FOR-1",
                "imaging_session_uid": "IMG-1", "acquired_at": NOW - 60,
                "couch_at_imaging": {"lat": 0.0, "long": 0.0, "vert": 0.0}},
}
VALID_ARGS: dict[str, dict[str, Any]] = {
    "propose": PROPOSE_ARGS, "confirm": {"proposal_id": "p1"}, "approve": {"proposal_id": "p1"},
    "hold": {"proposal_id": "p1"}, "stop": {"reason": "fuzz"},
    "jog": {"axis": "lat", "velocity": 1.0, "duration_s": 0.2},
    "open_session": {"patient_id": "PAT-1", "plan_uid": "PLAN-1",
                     "frame_of_reference_uid": "FOR-1", "iso": [0.0, 0.0, 0.0],
                     "patient_position": "HFS", "manual_override": "typed for the test room"},
}


JSON_BYTES = json_bytes()


@st.composite
def command_claims(draw: st.DrawFn) -> dict[str, Any]:
    """Claims a registered console would sign: right room, fresh, short lifetime."""
    cmd = draw(st.sampled_from(COMMANDS))
    iat = NOW - draw(st.floats(0, 5))
    return {
        "v": 1, "cmd": cmd, "args": copy.deepcopy(VALID_ARGS.get(cmd, {})),
        "sub": draw(st.sampled_from(sorted(USERS))), "aud": ROOM, "iat": iat,
        "exp": iat + draw(st.floats(1, 30)), "jti": draw(st.text("0123456789abcdef", min_size=16,
                                                               max_size=32)),
        "reply_to": "console1",
    }


COMMAND_CLAIMS = command_claims()


def _set_path(doc: Any, path: list[Any], value: Any) -> Any:
    """Copy of `doc` with the value at `path` replaced (or deleted when value is _DELETE)."""
    if not path:
        return value
    out = copy.copy(doc)
    head, rest = path[0], path[1:]
    if isinstance(out, dict):
        if rest:
            out[head] = _set_path(out[head], rest, value)
        elif value is _DELETE:
            out.pop(head, None)
        else:
            out[head] = value
    elif isinstance(out, list):
        if rest:
            out[head] = _set_path(out[head], rest, value)
        elif value is _DELETE:
            del out[head]
        else:
            out[head] = value
    return out


_DELETE = object()


def _leaf_paths(doc: Any) -> list[list[Any]]:
    """Every path to a value inside `doc` (containers and leaves)."""
    out: list[list[Any]] = []
    stack: list[tuple[list[Any], Any]] = [([], doc)]
    while stack:
        path, v = stack.pop()
        if path:
            out.append(path)
        if isinstance(v, dict):
            stack.extend((path + [k], x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((path + [i], x) for i, x in enumerate(v))
    return sorted(out, key=repr)


@st.composite
def mutated_document(draw: st.DrawFn, doc: Any, max_mutations: int = 3) -> str:
    """JSON text of `doc` with 1..n values replaced by hostile ones, deleted, duplicated
    or joined by unknown keys."""
    paths = _leaf_paths(doc)
    dup: tuple[list[Any], Any] | None = None
    for _ in range(draw(st.integers(1, max_mutations))):
        if not paths:
            break
        path = paths[draw(st.integers(0, len(paths) - 1))]
        op = draw(st.integers(0, 5))
        try:
            if op <= 2:
                doc = _set_path(doc, path, draw(HOSTILE))
            elif op == 3:
                doc = _set_path(doc, path, _DELETE)
            elif op == 4 and isinstance(path[-1], str):
                dup = (path, draw(HOSTILE))
            elif isinstance(path[-1], str):
                doc = _set_path(doc, path[:-1] + [draw(NEW_KEYS)], draw(HOSTILE))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the parent
        paths = _leaf_paths(doc)
    if dup is not None:
        doc = _with_duplicate(doc, dup[0], dup[1])
    return jsontext.dumps(doc)


def _with_duplicate(doc: Any, path: list[Any], value: Any) -> Any:
    """Turn the object holding `path` into an Obj with the key given twice."""
    if len(path) == 1 and isinstance(doc, dict):
        return Obj(tuple(doc.items()) + ((path[0], value),))
    if isinstance(doc, (dict, list)):
        try:
            inner = doc[path[0]]
        except (KeyError, IndexError, TypeError):
            return doc
        out = copy.copy(doc)
        out[path[0]] = _with_duplicate(inner, path[1:], value)
        return out
    return doc


HEADERS: st.SearchStrategy[bytes]
_HEADERS = [
    b'{"alg":"Ed25519","typ":"igrt-cmd+jws"}', b'{"alg":"EdDSA"}', b'{"alg":"none"}',
    b'{"alg":"HS256","typ":"igrt-cmd+jws"}', b'{"alg":"Ed25519","jku":"http://x"}',
    b'{"alg":"Ed25519","alg":"none"}', b'{"alg":NaN}', b"[]", b"not json",
    b'{"alg":"Ed25519","crit":["b64"],"b64":false}',
]
HEADERS = st.sampled_from(_HEADERS)


@st.composite
def signed_payloads(draw: st.DrawFn) -> bytes:
    """Correctly signed tokens (the test user's key) over valid or hostile claims."""
    claims = draw(COMMAND_CLAIMS)
    kind = draw(st.integers(0, 5))
    if kind == 0:
        body = json.dumps(claims).encode()
    elif kind <= 3:
        body = draw(mutated_document(claims)).encode()
    elif kind == 4:
        body = draw(DEEP_NESTING).encode()
    else:
        body = draw(JSON_BYTES)
    header = _HEADERS[0] if draw(st.integers(0, 4)) else draw(HEADERS)
    token = sign_compact(body, header)
    if draw(st.integers(0, 9)) == 0:
        token = draw(mutated_bytes(token))
    return token


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 2))
        i = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == 0 and buf:
            buf[i] = draw(st.integers(0, 255))
        elif op == 1 and buf:
            del buf[i:i + draw(st.integers(1, 8))]
        else:
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(buf)


SIGNED_PAYLOADS = signed_payloads()


@st.composite
def mqtt_payloads(draw: st.DrawFn) -> bytes:
    """What anyone with a broker account can publish on igrt/<room>/cmd."""
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        return draw(SIGNED_PAYLOADS)
    if kind == 3:
        return draw(JSON_BYTES)  # plain JSON, unsigned
    if kind == 4:
        parts = [draw(st.text("ABCDEFabcdef0123456789-_=", max_size=40)) for _ in range(3)]
        return ".".join(parts[: draw(st.integers(1, 3))]).encode()
    return draw(st.binary(max_size=300))


# ----------------------------------------------------------------- local socket


@st.composite
def local_request_lines(draw: st.DrawFn) -> bytes:
    """One request line as any local process could write it to igrtd's socket."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        cmd = draw(st.sampled_from(COMMANDS + ["", "nope", "__init__"]))
        req = {"cmd": cmd, "user": draw(st.sampled_from(["alice", "bob", "mallory", ""])),
               "args": copy.deepcopy(VALID_ARGS.get(cmd, {}))}
        return draw(mutated_document(req)).encode()
    if kind == 1:
        return draw(DEEP_NESTING).encode()
    if kind == 2:
        return draw(HOSTILE_DOCUMENTS).encode()
    if kind == 3:
        return draw(JSON_BYTES).replace(b"\n", b" ")
    return draw(BINARY).replace(b"\n", b"")


# ----------------------------------------------------------------------- config


@st.composite
def config_texts(draw: st.DrawFn) -> bytes:
    """Mutations of a valid room configuration (and now and then not JSON at all)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(JSON_BYTES)
    if kind == 1:
        return draw(mutated_text(json.dumps(base_config()))).encode("utf-8", "surrogatepass")
    return draw(mutated_document(base_config())).encode("utf-8", "surrogatepass")


# -------------------------------------------------------------------- REG files

# Explicit-VR element header of the RegistrationSequence (0070,0308) SQ.
_REG_SEQ_TAG = struct.pack("<HH", 0x0070, 0x0308) + b"SQ\x00\x00"
_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"OB", b"OD", b"OF", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI",
        b"UL", b"UN", b"US", b"UT", b"UC", b"UR", b"OV", b"SV", b"UV", b"ZZ", b"\x00\x00"]


def deep_sequence(depth: int) -> bytes:
    """An undefined-length SQ nested `depth` items deep (explicit VR little endian)."""
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    head = _REG_SEQ_TAG + struct.pack("<I", 0xFFFFFFFF)
    return (head + item) * depth + (item_end + seq_end) * depth


def reg_with_deep_sequence(depth: int) -> bytes:
    """The base REG with its RegistrationSequence replaced by a `depth`-deep nesting."""
    base = base_reg()
    i = base.find(_REG_SEQ_TAG)
    return base[:i] + deep_sequence(depth)


def _vr_offsets(data: bytes) -> list[int]:
    """Offsets of the VR of explicit-VR elements (after the 132-byte preamble+magic)."""
    out = []
    for vr in _VRS[:-2]:
        start = 132
        while True:
            j = data.find(vr, start)
            if j < 0:
                break
            if j >= 136:
                out.append(j)
            start = j + 1
    return sorted(out)


@st.composite
def reg_files(draw: st.DrawFn) -> bytes:
    """Mutations of a valid REG written by imaging/dicom_reg.py."""
    base = base_reg()
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return reg_with_deep_sequence(draw(st.sampled_from([2, 50, 500, 3000])))
    if kind == 1:  # truncated
        return base[: draw(st.integers(0, len(base)))]
    if kind == 2:  # a VR replaced by another (or an unknown one)
        offsets = _vr_offsets(base)
        j = draw(st.sampled_from(offsets))
        return base[:j] + draw(st.sampled_from(_VRS)) + base[j + 2:]
    if kind == 3:  # a length field replaced
        offsets = _vr_offsets(base)
        j = draw(st.sampled_from(offsets)) + 2
        value = draw(st.sampled_from([0, 1, 3, 0xFFFF, 0x7FFF, 0xFFFE]))
        return base[:j] + struct.pack("<H", value) + base[j + 2:]
    if kind == 4:  # text values replaced inside the dataset
        j = draw(st.integers(132, len(base) - 1))
        blob = draw(st.sampled_from([b"NaN\\", b"inf", b"1e400", b"\\\\\\", b"\xff\xfe",
                                     b"-0", b"RIGID", b"AFFINE"]))
        return base[:j] + blob + base[j + len(blob):]
    return draw(mutated_bytes(base))


# ------------------------------------------------------------------ couch frames


@st.composite
def couch_messages(draw: st.DrawFn) -> Any:
    from drivers import couch_protocol as cp

    i32 = st.integers(cp.INT32_MIN, cp.INT32_MAX)
    u16 = st.integers(0, 0xFFFF)
    u8 = st.integers(0, 0xFF)
    pos = st.tuples(i32, i32, i32, i32, i32, i32)
    return draw(st.one_of(
        st.just(cp.Heartbeat()), st.just(cp.StatusRequest()), st.just(cp.Stop()),
        st.just(cp.Reset()),
        st.builds(cp.Target, pos, u16), st.builds(cp.Go, u16),
        st.builds(cp.Jog, u8, i32, u16), st.builds(cp.Ack, u8),
        st.builds(cp.Nak, u8, u8, u8, i32, i32),
        st.builds(cp.Status, u8, u8, u8, u8, u16, u16, pos, u16, u16, u16,
                  st.integers(0, 2**32 - 1)),
        st.builds(cp.TargetEchoMsg, u16, pos, u16, pos, u8),
    ))


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    from drivers import couch_protocol as cp

    return cp.encode(draw(st.integers(0, 255)), draw(couch_messages()))


@st.composite
def couch_streams(draw: st.DrawFn) -> bytes:
    """A serial byte stream: valid frames, damaged frames, raw-typed frames and noise."""
    from drivers import couch_protocol as cp

    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 5))
        if kind <= 1:
            parts.append(draw(valid_frames()))
        elif kind == 2:
            parts.append(draw(mutated_bytes(draw(valid_frames()))))
        elif kind == 3:  # good CRC around any type and payload
            payload = draw(st.binary(max_size=cp.MAX_PAYLOAD))
            parts.append(cp.encode_raw(draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                                       payload))
        elif kind == 4:
            parts.append(cp.SOF + draw(st.binary(max_size=12)))
        else:
            parts.append(draw(st.binary(max_size=40)))
    return b"".join(parts)


# ----------------------------------------------------------------- PLC registers

register = st.one_of(st.integers(0, 0xFFFF),
                     st.sampled_from([0, 1, 2, 999, 1000, 1001, 35999, 36000, 0x7FFF, 0x8000,
                                      0xFFFE, 0xFFFF]))


@st.composite
def plc_status_blocks(draw: st.DrawFn) -> list[int]:
    """Status blocks (holding registers 0..9): a healthy block with fields replaced."""
    block = safe_block(draw(st.integers(0, 0xFFFF)))
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.integers(0, len(block) - 1))
        if field == 0:
            block[0] = draw(st.one_of(st.integers(0, 0xFF), register))
        elif field == 6:
            version = block[6]
            block[6] = draw(st.sampled_from([version, version, version, 0, version - 1,
                                             version + 1, 0xFFFF]))
        else:
            block[field] = draw(register)
    return block
