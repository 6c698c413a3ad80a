"""Property-based fuzzing of every entry point that reads outside input, in process.

Each test draws inputs from tests/fuzz/strategies.py and holds them to the
target's property in tests/fuzz/targets.py: accept, or refuse with the
documented error type and one line; never another exception. The number of
examples comes from the IGRT_FUZZ_PROFILE profile (tests/fuzz/harness.py).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from . import strategies as s
from .harness import fuzz_settings, run_target
from .jsontext import deep_array_doc
from .targets import (
    MAP_VERSION,
    check_mutated_frame,
    check_plc_reserved_bits,
    safe_block,
    sign_compact,
)

# Inputs of 100 KB are the point here; hypothesis need not warn that they print long.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# ------------------------------------------------------------------ strict JSON


@fuzz_settings(1.5)
@given(s.json_bytes())
def test_strict_json_reads_or_refuses_any_bytes_in_one_line(data: bytes) -> None:
    run_target("strict_json", data)


@fuzz_settings()
@given(s.json_values())
def test_strict_json_reads_every_shallow_finite_document_as_json_does(value: object) -> None:
    run_target("strict_json", json.dumps(value).encode())


# ------------------------------------------------------------- console commands


@fuzz_settings(2.0)
@given(s.mqtt_payloads())
@example(deep_array_doc(5000).encode())
@example(sign_compact(deep_array_doc(5000).encode()))
def test_console_command_is_verified_or_rejected_with_a_code(payload: bytes) -> None:
    run_target("mqtt_command", payload)


@fuzz_settings(2.0)
@given(s.signed_payloads())
def test_correctly_signed_hostile_claims_are_verified_or_rejected(payload: bytes) -> None:
    run_target("mqtt_command", payload)


@fuzz_settings()
@given(s.command_claims(), st.sampled_from(["iat", "exp"]),
       st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "1e308", "-1e308", "true"]))
def test_signed_command_with_a_non_finite_or_absurd_time_is_rejected(
    claims: dict[str, object], field: str, raw: str
) -> None:
    text = json.dumps({**claims, field: "__RAW__"}).replace('"__RAW__"', raw)
    run_target("mqtt_command", sign_compact(text.encode()))


# ----------------------------------------------------------------- local socket


@fuzz_settings(0.5)
@given(s.local_request_lines())
def test_local_request_line_gets_one_reply_and_the_socket_keeps_serving(line: bytes) -> None:
    run_target("local_line", line)


# ----------------------------------------------------------------------- config


@fuzz_settings(2.0)
@given(s.config_texts())
def test_room_config_is_accepted_sane_or_refused_with_one_line_problems(text: bytes) -> None:
    run_target("config", text)


# -------------------------------------------------------------------- REG files


@fuzz_settings(1.5)
@given(s.reg_files())
def test_reg_file_reads_as_rigid_or_refuses_in_one_line_without_warnings(data: bytes) -> None:
    run_target("reg_file", data)


# ------------------------------------------------------------------ couch frames


@fuzz_settings(1.0)
@given(s.couch_streams(), st.integers(1, 9))
def test_couch_byte_stream_decodes_without_raising_and_accounts_for_every_byte(
    data: bytes, chunk: int
) -> None:
    from .targets import check_couch_frames

    run_target("couch_frames", data, lambda d: check_couch_frames(d, chunk))


@fuzz_settings(1.5)
@given(s.valid_frames(), st.integers(2, 200), st.integers(0, 255))
def test_couch_frame_with_one_byte_changed_is_never_accepted(
    frame: bytes, offset: int, value: int
) -> None:
    check_mutated_frame(frame, offset % len(frame), value)


# ----------------------------------------------------------------- PLC registers


@fuzz_settings(2.0)
@given(s.plc_status_blocks())
@example([0b00111111, 7, 0, 0xFFFF, 0, 0, MAP_VERSION, 0, 0, 0])
@example([0b00111111, 7, 5, 0, 0, 0, MAP_VERSION, 0, 0, 0])
@example([0b00111111, 7, 0, 0, 0, 0, MAP_VERSION, 0x0100, 0, 0])
@example([0b00111111, 0, 0, 0, 0, 0, MAP_VERSION, 0x1000, 0, 0])  # enable released for a moment
@example([0b00111111, 7, 0, 0, 0, 0, MAP_VERSION, 0, 0, 36000])  # gantry angle 360.00 deg
@example([0b00111111, 7, 0, 0, 0, 0, MAP_VERSION - 1, 0, 0, 0])  # a map version 2 PLC
def test_plc_status_block_is_judged_consistent_or_unsafe_never_clamped(regs: list[int]) -> None:
    run_target("plc_registers", regs)


@fuzz_settings(0.5)
@given(st.integers(1, 0xFF))
def test_plc_status_word_with_reserved_bits_set_is_not_judged_safe(high: int) -> None:
    regs = safe_block(9)
    regs[0] |= high << 8
    run_target("plc_registers", regs, check_plc_reserved_bits)
