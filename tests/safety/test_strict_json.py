"""safety/strict_json: the one reader for JSON from outside. Each test is one
refusal (or acceptance) rule; every refusal is a one-line JsonInputError."""

from __future__ import annotations

import json
import sys

import pytest

from safety import strict_json
from safety.strict_json import JsonInputError, loads, nesting_depth

DEEP_5000 = '{"a":' + "[" * 5000 + "]" * 5000 + "}"


def _refused(data: str | bytes, **kw: int) -> str:
    with pytest.raises(JsonInputError) as info:
        loads(data, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_ordinary_document_is_read() -> None:
    assert loads('{"cmd": "status", "args": {"x": [1, 2.5, -3e2]}, "ok": true, "n": null}') == {
        "cmd": "status", "args": {"x": [1, 2.5, -300.0]}, "ok": True, "n": None}


def test_bytes_are_read_as_utf8() -> None:
    assert loads('{"name": "Müller"}'.encode()) == {"name": "Müller"}


def test_the_issue_reproduction_5000_deep_is_refused_without_recursion_error() -> None:
    assert "nesting depth 5001 exceeds the limit of 64" in _refused(DEEP_5000)


def test_nesting_far_beyond_the_recursion_limit_is_refused() -> None:
    deep = "[" * (sys.getrecursionlimit() * 100) + "]" * (sys.getrecursionlimit() * 100)
    _refused(deep, max_bytes=10_000_000)


def test_depth_exactly_at_the_limit_is_accepted() -> None:
    assert loads("[[[]]]", max_depth=3) == [[[]]]
    assert "depth 4 exceeds the limit of 3" in _refused("[[[[]]]]", max_depth=3)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"note": "[" * 1000 + "{" * 1000, "esc": '\\"[[['})
    assert nesting_depth(text) == 1
    assert loads(text, max_depth=1)["note"].startswith("[[[")


def test_an_unterminated_string_does_not_hang_the_depth_scan() -> None:
    _refused('"' + "\\a" * 100_000)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constants_are_refused(literal: str) -> None:
    assert "only finite numbers" in _refused(f'{{"iat": {literal}}}')


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e999"])
def test_floats_that_overflow_to_infinity_are_refused(number: str) -> None:
    assert "out of range" in _refused(f'{{"exp": {number}}}')


def test_duplicate_keys_are_refused() -> None:
    assert "duplicate key 'alg'" in _refused('{"alg": "Ed25519", "alg": "none"}')


def test_oversized_document_is_refused_before_parsing() -> None:
    assert "limit 10 bytes" in _refused('{"a": "0123456789"}', max_bytes=10)


def test_non_utf8_bytes_are_refused() -> None:
    assert "not UTF-8" in _refused(b'{"a": "\xff"}')


def test_malformed_json_is_refused_with_its_position() -> None:
    assert "line 1 column" in _refused('{"a": }')


def test_an_integer_too_long_for_python_to_convert_is_refused() -> None:
    _refused("1" * 5000)


def test_refusals_are_value_errors_for_existing_callers() -> None:
    assert issubclass(strict_json.JsonInputError, ValueError)
