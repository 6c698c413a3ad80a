"""Writes the hand-made part of the crash corpus: the exact inputs of the defects
of issue 11. The files are kept in git; this script says how each was made and
remakes them: `.venv/bin/python -m tests.fuzz.seed_corpus` from the repo root.
"""

from __future__ import annotations

import json
from pathlib import Path

from .jsontext import deep_array_doc
from .strategies import reg_with_deep_sequence
from .targets import CORPUS, NOW, base_config, base_reg, sign_compact


def _claims(**over: object) -> str:
    claims = {"v": 1, "cmd": "status", "args": {}, "sub": "alice", "aud": "room1", "iat": NOW - 1,
              "exp": NOW + 9, "jti": "0123456789abcdef", "reply_to": "console1"}
    text = json.dumps({**claims, **{k: f"__RAW_{k}__" for k in over}})
    for k, raw in over.items():
        text = text.replace(f'"__RAW_{k}__"', str(raw))
    return text


def _config(path: list[str], raw: str) -> str:
    cfg = base_config()
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = "__RAW__"
    return json.dumps(cfg, indent=1).replace('"__RAW__"', raw)


def files() -> dict[str, dict[str, bytes]]:
    deep = deep_array_doc(5000).encode()
    return {
        "strict_json": {
            "deep-5000.json": deep,
            "nan.json": b'{"iat": NaN}',
            "infinity.json": b'[Infinity, -Infinity]',
            "1e400.json": b'{"x": 1e400}',
            "duplicate-key.json": b'{"cmd": "status", "cmd": "stop"}',
            "long-integer.json": b"[" + b"9" * 5000 + b"]",
        },
        "mqtt_command": {
            "plain-deep-5000.bin": deep,
            "jws-deep-5000.bin": sign_compact(deep),
            "jws-nan-iat.bin": sign_compact(_claims(iat="NaN").encode()),
            "jws-nan-exp.bin": sign_compact(_claims(exp="NaN").encode()),
            "jws-infinity-exp.bin": sign_compact(_claims(exp="Infinity").encode()),
            "jws-1e400-iat.bin": sign_compact(_claims(iat="1e400").encode()),
            "jws-duplicate-sub.bin": sign_compact(
                _claims()[:-1].encode() + b', "sub": "bob"}'),
            "jws-deep-args.bin": sign_compact(
                _claims(args=deep_array_doc(3000)).encode()),
        },
        "local_line": {
            "deep-100000.line": deep_array_doc(100_000).encode(),
            "deep-args-5000.line": b'{"cmd": "status", "user": "alice", "args": '
                                   + deep + b"}",
            "nan-jog-velocity.line": b'{"cmd": "jog", "user": "sam", "args": {"axis": "lat", '
                                     b'"velocity": NaN, "duration_s": 0.2}}',
            "duplicate-user.line": b'{"cmd": "status", "user": "mallory", "user": "alice"}',
            "not-utf8.line": b'{"cmd": "\xff\xfe"}',
        },
        "config": {
            "registration-age-infinity.json": _config(
                ["binding", "max_registration_age_s"], "Infinity").encode(),
            "registration-age-1e308.json": _config(
                ["binding", "max_registration_age_s"], "1e308").encode(),
            "hold-timeout-true.json": _config(["motion", "hold_timeout_s"], "true").encode(),
            "baudrate-true.json": _config(["couch", "baudrate"], "true").encode(),
            "baudrate-1e30.json": _config(["couch", "baudrate"], "1e30").encode(),
            "tolerance-1e308.json": _config(["motion", "arrival_tolerance_mm"], "1e308").encode(),
            "plc-host-empty.json": _config(["plc", "host"], '""').encode(),
            "couch-port-empty.json": _config(["couch", "port"], '""').encode(),
            "public-key-invalid.json": _config(
                ["users"], '[{"name": "alice", "role": "therapist", "public_key": '
                           '{"kty": "OKP", "crv": "Ed25519", "x": "not-a-key"}}]').encode(),
            "plc-poll-vs-staleness.json": _config(["plc", "heartbeat_stale_s"], "0.1").replace(
                '"poll_interval_s": 0.003', '"poll_interval_s": 0.1').encode(),
            "deep-5000.json": _config(["policy"], deep_array_doc(5000)).encode(),
        },
        "reg_file": {
            "valid.dcm": base_reg(),
            "deep-sequence-1200.dcm": reg_with_deep_sequence(1200),
        },
        "couch_frames": {
            "empty.bin": b"",
            "sof-only.bin": b"\xa5\x5a",
            "len-max.bin": b"\xa5\x5a\xff\x01\x01",
        },
        "plc_registers": {
            "arm-position-65535.json": b"[63, 7, 0, 65535, 0, 0, 3, 0, 0, 0]\n",
            "fault-code-5.json": b"[63, 7, 5, 0, 0, 0, 3, 0, 0, 0]\n",
            "map-version-1.json": b"[63, 7, 0, 0, 0, 0, 1, 0, 0, 0]\n",
            "map-version-2.json": b"[63, 7, 0, 0, 0, 0, 2, 0, 0, 0]\n",
            "collision-pad-opened-between-reads.json": b"[63, 7, 0, 0, 0, 0, 3, 256, 0, 0]\n",
            "gantry-angle-36000.json": b"[63, 7, 0, 0, 0, 0, 3, 0, 0, 36000]\n",
        },
    }


def main() -> None:
    for target, named in files().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in named.items():
            Path(d / name).write_bytes(data)


if __name__ == "__main__":
    main()
