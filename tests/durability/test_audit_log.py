"""The audit log: append, read back, rotate, recover from a crash."""

from __future__ import annotations

import base64
import enum
import json
import math
import os
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon.audit import (
    GENESIS_HASH,
    HEAD_FILE,
    AuditCorruptError,
    AuditError,
    AuditLockedError,
    AuditLog,
    AuditWriteError,
    list_segments,
    segment_name,
    verify,
)

from .helpers import make_log, only_segment, read_lines


def test_appended_record_is_on_disk_when_append_returns(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        rec = log.append("proposal", "alice", proposal_id="p1", target={"lat_mm": 1.5})
        on_disk = read_lines(only_segment(tmp_path))
    assert on_disk[-1]["hash"] == rec.hash
    assert on_disk[-1]["details"] == {"proposal_id": "p1", "target": {"lat_mm": 1.5}}


def test_records_chain_from_genesis_with_increasing_seq(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        a = log.append("proposal", "alice")
        b = log.append("confirmation", "alice")
    assert (a.seq, b.seq) == (1, 2)
    assert a.prev_hash == GENESIS_HASH
    assert b.prev_hash == a.hash


def test_record_carries_unix_and_utc_iso_time(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        rec = log.append("stop", "system")
    line = read_lines(only_segment(tmp_path))[0]
    assert line["ts"] == rec.ts
    assert line["time"].endswith("Z") and line["time"] == rec.time_iso


def test_verify_accepts_an_untouched_log(tmp_path: Path) -> None:
    make_log(tmp_path, 50)
    result = verify(tmp_path)
    assert result.ok and result.records == 50 and result.first_bad is None


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    make_log(tmp_path, 5)
    with AuditLog(tmp_path) as log:
        rec = log.append("fault", "system", code="E12")
    assert rec.seq == 6
    assert verify(tmp_path).ok


def test_records_filter_by_actor_event_and_time(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        first = log.append("proposal", "alice")
        log.append("approval", "bob")
        last = log.append("proposal", "bob")
        assert [r.seq for r in log.records(actor="bob")] == [2, 3]
        assert [r.seq for r in log.records(event="proposal")] == [1, 3]
        assert [r.seq for r in log.records(since=last.ts)] == [3]
        assert [r.seq for r in log.records(until=first.ts)] == [1]


def test_tail_returns_last_records_oldest_first_across_segments(tmp_path: Path) -> None:
    make_log(tmp_path, 25, segment_max_records=10)
    with AuditLog(tmp_path) as log:
        assert [r.seq for r in log.tail(7)] == [19, 20, 21, 22, 23, 24, 25]
        assert [r.seq for r in log.tail(100)] == list(range(1, 26))
        assert log.tail(0) == []


def test_tail_reads_back_across_many_blocks(tmp_path: Path) -> None:
    with AuditLog(tmp_path, fsync=False) as log:
        for i in range(300):
            log.append("command", "alice", i=i, pad="x" * 1000)  # ~300 KB
        assert [r.details["i"] for r in log.tail(250)] == list(range(50, 300))


def test_rotation_starts_segments_named_by_first_seq_and_keeps_the_chain(tmp_path: Path) -> None:
    make_log(tmp_path, 25, segment_max_records=10)
    names = [p.name for _, p in list_segments(tmp_path)]
    assert names == [segment_name(1), segment_name(11), segment_name(21)]
    first_of_second = read_lines(tmp_path / segment_name(11))[0]
    last_of_first = read_lines(tmp_path / segment_name(1))[-1]
    assert first_of_second["prev_hash"] == last_of_first["hash"]
    assert verify(tmp_path).records == 25


def test_reopen_with_smaller_segment_limit_rotates_on_next_append(tmp_path: Path) -> None:
    make_log(tmp_path, 5)
    with AuditLog(tmp_path, segment_max_records=3) as log:
        log.append("command", "alice")
    assert [s for s, _ in list_segments(tmp_path)] == [1, 6]
    assert verify(tmp_path).ok


def test_details_of_any_type_are_stored_as_plain_json(tmp_path: Path) -> None:
    class Axis(enum.Enum):
        LAT = "lat"

    class Target(BaseModel):
        lat_mm: float

    with AuditLog(tmp_path) as log:
        rec = log.append(
            "command",
            "alice",
            axis=Axis.LAT,
            target=Target(lat_mm=2.0),
            bad=math.nan,
            path=Path("/x"),
            raw=b"\x01",
            axes=("lat", "vrt"),
        )
    assert rec.details == {
        "axis": "lat",
        "target": {"lat_mm": 2.0},
        "bad": "nan",
        "path": "/x",
        "raw": "01",
        "axes": ["lat", "vrt"],
    }
    assert verify(tmp_path).ok


def test_unicode_details_survive_and_verify(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        log.append("confirmation", "jos\u00e9", note="line\u2028sep \u00b0 \U0001f600")
    assert verify(tmp_path).ok
    assert next(iter(AuditLog(tmp_path).records())).actor == "jos\u00e9"


def test_empty_event_or_actor_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        with pytest.raises(ValueError, match="event"):
            log.append("", "alice")
        with pytest.raises(ValueError, match="actor"):
            log.append("stop", "")


def test_append_on_a_closed_log_is_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    with pytest.raises(AuditError, match="not open"):
        log.append("stop", "system")


def test_second_writer_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path), pytest.raises(AuditLockedError, match="another process"):
        AuditLog(tmp_path).open()


def test_concurrent_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    with AuditLog(tmp_path, fsync=False) as log:

        def worker(name: str) -> None:
            for i in range(100):
                log.append("command", name, i=i)

        threads = [threading.Thread(target=worker, args=(f"t{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verify(tmp_path).records == 400


def test_failed_fsync_refuses_every_later_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditLog(tmp_path) as log:
        log.append("proposal", "alice")

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(AuditWriteError, match="durable"):
            log.append("command", "alice")
        monkeypatch.undo()
        with pytest.raises(AuditWriteError, match="earlier write failed"):
            log.append("command", "alice")
    assert verify(tmp_path).records == 1


# ---------------------------------------------------------------- crash recovery


def test_torn_final_line_is_cut_and_kept_as_evidence_in_a_recovery_record(tmp_path: Path) -> None:
    make_log(tmp_path, 3)
    seg = only_segment(tmp_path)
    torn = b'{"seq":4,"time":"2026-05-0'
    with seg.open("ab") as f:
        f.write(torn)
    with AuditLog(tmp_path) as log:
        assert len(log.recoveries) == 1
        recovery = log.tail(1)[0]
    assert recovery.seq == 4 and recovery.event == "audit_recovery"
    assert base64.b64decode(recovery.details["discarded_b64"]) == torn
    assert (tmp_path / recovery.details["evidence_file"]).read_bytes() == torn
    assert recovery.details["reason"] == "unterminated final line"
    assert verify(tmp_path).ok


def test_final_line_of_zeros_after_power_loss_is_cut(tmp_path: Path) -> None:
    make_log(tmp_path, 3)
    with only_segment(tmp_path).open("ab") as f:
        f.write(b"\0" * 300 + b"\n")
    with AuditLog(tmp_path) as log:
        assert log.tail(1)[0].event == "audit_recovery"
    assert verify(tmp_path).records == 4


def test_verify_reports_a_torn_final_line_as_a_warning_not_tampering(tmp_path: Path) -> None:
    make_log(tmp_path, 3)
    with only_segment(tmp_path).open("ab") as f:
        f.write(b'{"seq":4')
    result = verify(tmp_path)
    assert result.ok and result.records == 3
    assert "unterminated final line" in result.warnings[0]


def test_bad_record_before_the_final_line_is_not_repaired(tmp_path: Path) -> None:
    make_log(tmp_path, 5)
    seg = only_segment(tmp_path)
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"index":3', b'"index":9')
    seg.write_bytes(b"".join(lines))
    before = seg.read_bytes()
    with pytest.raises(AuditCorruptError, match="not continuing the chain"):
        AuditLog(tmp_path).open()
    assert seg.read_bytes() == before


def test_two_bad_final_lines_are_not_treated_as_a_torn_write(tmp_path: Path) -> None:
    make_log(tmp_path, 5)
    seg = only_segment(tmp_path)
    with seg.open("ab") as f:
        f.write(b"garbage\n" + b'{"seq":')
    before = seg.read_bytes()
    with pytest.raises(AuditCorruptError, match="not repairing"):
        AuditLog(tmp_path).open()
    assert seg.read_bytes() == before


def test_empty_segment_left_by_a_crash_during_rotation_is_reused(tmp_path: Path) -> None:
    make_log(tmp_path, 10, segment_max_records=10)
    (tmp_path / segment_name(11)).touch()
    with AuditLog(tmp_path, segment_max_records=10) as log:
        assert log.append("command", "alice").seq == 11
    assert [s for s, _ in list_segments(tmp_path)] == [1, 11]
    assert verify(tmp_path).ok


def test_log_missing_its_last_segment_refuses_to_continue(tmp_path: Path) -> None:
    make_log(tmp_path, 25, segment_max_records=10)
    (tmp_path / segment_name(21)).unlink()
    with pytest.raises(AuditCorruptError, match="missing from the end"):
        AuditLog(tmp_path).open()


def test_verify_detects_records_removed_from_the_end_via_the_head_anchor(tmp_path: Path) -> None:
    make_log(tmp_path, 25, segment_max_records=10)
    (tmp_path / segment_name(21)).unlink()
    result = verify(tmp_path)
    assert not result.ok and "removed from the end" in result.problem


def test_head_anchor_is_written_on_close(tmp_path: Path) -> None:
    make_log(tmp_path, 4)
    anchor = json.loads((tmp_path / HEAD_FILE).read_text())
    assert anchor["seq"] == 4
    assert anchor["hash"] == verify(tmp_path).head_hash
