"""`igrtctl audit verify|show`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from daemon.audit import AuditLog, read_records
from daemon.igrtctl.audit import parse_when, run_audit
from daemon.igrtctl.exits import ExitCode

from .helpers import make_log, only_segment, read_lines, write_lines


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_audit(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def room_log(tmp_path: Path) -> Path:
    with AuditLog(tmp_path) as log:
        log.append("proposal", "alice", proposal_id="p1")
        log.append("approval", "bob", proposal_id="p1")
        log.append("command", "alice", cmd="go")
        log.append("motion", "system", state="completed")
    return tmp_path


def test_verify_ok_exits_zero(room_log: Path) -> None:
    code, out, _ = run("verify", "--dir", str(room_log))
    assert code == 0 and out.startswith("audit OK: 4 records")


def test_leading_audit_word_is_accepted(room_log: Path) -> None:
    assert run("audit", "verify", "--dir", str(room_log))[0] == 0


def test_verify_tampered_exits_audit_damaged_naming_the_first_bad_record(room_log: Path) -> None:
    seg = only_segment(room_log)
    records = read_lines(seg)
    records[2]["details"]["cmd"] = "stop"
    write_lines(seg, records)
    code, out, _ = run("verify", "--dir", str(room_log))
    assert code == ExitCode.AUDIT_DAMAGED == 5
    assert out.startswith("audit TAMPERED: first bad record seq 3:")
    assert len(out.strip().splitlines()) == 1


def test_verify_uses_igrt_audit_dir_by_default(
    room_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IGRT_AUDIT_DIR", str(room_log))
    assert run("verify")[0] == 0


def test_show_filters_by_user_and_event(room_log: Path) -> None:
    _, out, _ = run("show", "--dir", str(room_log), "--user", "alice", "--event", "command")
    lines = out.splitlines()
    assert len(lines) == 1 and "command" in lines[0] and '"cmd":"go"' in lines[0]


def test_show_filters_by_time(room_log: Path) -> None:
    third = AuditLog(room_log).tail(2)[0]
    _, out, _ = run("show", "--dir", str(room_log), "--since", third.time_iso, "--json")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [3, 4]
    _, out, _ = run("show", "--dir", str(room_log), "--until", "2000-01-01")
    assert out == ""


def test_time_copied_from_show_selects_that_very_record(tmp_path: Path) -> None:
    make_log(tmp_path, 200)
    for rec in AuditLog(tmp_path).records():
        when = parse_when(rec.time_iso)
        assert rec.seq in [r.seq for r in read_records(tmp_path, since=when, until=when)]


def test_show_json_prints_records_as_stored(room_log: Path) -> None:
    _, out, _ = run("show", "--dir", str(room_log), "--json", "--last", "1")
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["seq"] == 4 and record["event"] == "motion" and len(record["hash"]) == 64


def test_show_last_applies_after_filters(room_log: Path) -> None:
    _, out, _ = run("show", "--dir", str(room_log), "--user", "alice", "--last", "1")
    assert len(out.splitlines()) == 1 and "command" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["show", "--since", "yesterday"], "not an ISO 8601 time"),
        (["show", "--since", "2026-01-02", "--until", "2026-01-01"], "after --until"),
        (["frobnicate"], "invalid choice"),
        (["show", "--last", "-1"], "must be >= 0"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_two(
    room_log: Path, argv: list[str], needle: str
) -> None:
    code, out, err = run(*argv, "--dir", str(room_log)) if argv[0] == "show" else run(*argv)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


def test_missing_directory_gives_one_line_error(tmp_path: Path) -> None:
    code, _, err = run("show", "--dir", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = run("verify", "--dir", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err


def test_show_on_a_damaged_log_says_to_verify(tmp_path: Path) -> None:
    make_log(tmp_path, 3)
    seg = only_segment(tmp_path)
    seg.write_bytes(seg.read_bytes().replace(b'"index":1', b'"index":7'))
    code, _, err = run("show", "--dir", str(tmp_path))
    assert code == ExitCode.AUDIT_DAMAGED and "audit verify" in err and len(err.strip().splitlines()) == 1


def test_show_does_not_repair_a_torn_final_line(tmp_path: Path) -> None:
    make_log(tmp_path, 3)
    seg = only_segment(tmp_path)
    with seg.open("ab") as f:
        f.write(b'{"seq":4')
    before = seg.read_bytes()
    code, out, _ = run("show", "--dir", str(tmp_path))
    assert code == 0 and len(out.splitlines()) == 3
    assert seg.read_bytes() == before
