"""Tampering with any single audit record is detected and located."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.audit import segment_name, verify

from .helpers import make_log, only_segment, read_lines, rehash, write_lines

N = 12


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    make_log(tmp_path, N)
    return tmp_path


def test_edited_field_is_named_as_first_bad(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    records[4]["actor"] = "mallory"
    write_lines(seg, records)
    result = verify(log_dir)
    assert not result.ok
    assert result.first_bad == 5
    assert "edited" in result.problem and "line 5" in result.problem


def test_edited_and_rehashed_record_breaks_the_next_link(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    records[4]["details"]["index"] = 99
    records[4] = rehash(records[4])
    write_lines(seg, records)
    result = verify(log_dir)
    assert result.first_bad == 6 and "prev_hash" in result.problem


def test_deleted_record_is_detected_where_it_was(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    del records[6]
    write_lines(seg, records)
    result = verify(log_dir)
    assert result.first_bad == 7 and "found seq 8" in result.problem


def test_swapped_records_are_detected_at_the_first_of_them(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    records[3], records[4] = records[4], records[3]
    write_lines(seg, records)
    assert verify(log_dir).first_bad == 4


def test_inserted_forged_record_is_detected_at_its_position(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    forged = dict(records[5], actor="mallory", event="approval")
    records.insert(6, forged)
    write_lines(seg, records)
    assert verify(log_dir).first_bad == 7


def test_inserted_forged_record_with_a_valid_hash_breaks_the_chain_after_it(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    forged = rehash(dict(records[6], actor="mallory", details={"forged": True}))
    records.insert(6, forged)  # same seq 7 and prev_hash as the genuine record 7
    write_lines(seg, records)
    result = verify(log_dir)
    assert result.first_bad == 8 and "found seq 7" in result.problem


def test_truncated_middle_is_detected_at_the_first_missing_record(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    write_lines(seg, records[:3] + records[8:])
    result = verify(log_dir)
    assert result.first_bad == 4 and "found seq 9" in result.problem


def test_record_cut_in_the_middle_of_the_file_is_detected(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:40] + b"\n"
    seg.write_bytes(b"".join(lines))
    assert verify(log_dir).first_bad == 3


def test_duplicated_json_key_is_rejected(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'{"seq":2,', b'{"seq":2,"seq":2,')
    seg.write_bytes(b"".join(lines))
    result = verify(log_dir)
    assert result.first_bad == 2 and "duplicate key" in result.problem


def test_a_line_nested_100000_deep_is_a_bad_record_not_a_crash(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[3] = b'{"details":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    seg.write_bytes(b"".join(lines))
    result = verify(log_dir)
    assert result.first_bad == 4 and "nesting depth" in result.problem


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"1e400"])
def test_a_non_finite_number_in_a_record_is_rejected(log_dir: Path, constant: bytes) -> None:
    seg = only_segment(log_dir)
    lines = seg.read_bytes().splitlines(keepends=True)
    old = json.loads(lines[2])["ts"]
    lines[2] = lines[2].replace(f'"ts":{old!r}'.encode(), b'"ts":' + constant)
    seg.write_bytes(b"".join(lines))
    result = verify(log_dir)
    assert result.first_bad == 3 and "number" in result.problem


def test_whitespace_only_reformatting_is_not_tampering(log_dir: Path) -> None:
    seg = only_segment(log_dir)
    lines = seg.read_bytes().splitlines()
    pretty = [json.dumps(json.loads(line), separators=(", ", ": ")).encode() for line in lines]
    seg.write_bytes(b"\n".join(pretty) + b"\n")
    assert verify(log_dir).ok


@pytest.mark.parametrize("index", range(N))
@pytest.mark.parametrize("field", ["seq", "ts", "event", "actor", "details", "prev_hash", "hash"])
def test_any_single_field_edit_anywhere_is_detected_at_that_record(
    log_dir: Path, index: int, field: str
) -> None:
    seg = only_segment(log_dir)
    records = read_lines(seg)
    value = records[index][field]
    records[index][field] = {
        int: lambda v: v + 1,
        float: lambda v: v + 0.5,
        str: lambda v: ("f" if v[:1] != "f" else "e") + v[1:],
        dict: lambda v: {**v, "x": 1},
    }[type(value)](value)
    write_lines(seg, records)
    assert verify(log_dir).first_bad == index + 1


def test_deleted_segment_in_the_middle_is_detected(tmp_path: Path) -> None:
    make_log(tmp_path, 30, segment_max_records=10)
    (tmp_path / segment_name(11)).unlink()
    result = verify(tmp_path)
    assert result.first_bad == 11 and "segment" in result.problem


def test_renamed_segments_are_detected(tmp_path: Path) -> None:
    make_log(tmp_path, 20, segment_max_records=10)
    (tmp_path / segment_name(11)).rename(tmp_path / segment_name(12))
    assert verify(tmp_path).first_bad == 11


def test_record_moved_across_segments_is_detected(tmp_path: Path) -> None:
    make_log(tmp_path, 20, segment_max_records=10)
    first, second = tmp_path / segment_name(1), tmp_path / segment_name(11)
    a, b = read_lines(first), read_lines(second)
    write_lines(first, a + b[:1])
    write_lines(second, b[1:])
    assert verify(tmp_path).first_bad == 12
