"""`igrtctl qa daily | couch-sag | calibrate | report` (issue 16): the options, one-line
errors with igrtctl's exit codes, the order of igrtd commands a daily QA sends (against a
stand-in igrtd and simulated room), and the numbers inside the HTML report."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.igrtctl import qa, qa_daily
from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.links import Reply
from daemon.igrtctl.main import main as igrtctl
from daemon.qa_report import FAIL, write_report

DAY = 86400.0
T0 = 1_796_000_000.0  # 2026-11-30


def _check(name: str, axis: str, value: float, limit: float, unit: str = "mm") -> dict[str, Any]:
    return {"name": name, "axis": axis, "value": value, "limit": limit, "unit": unit,
            "passed": abs(value) <= limit}


def _result(rid: int, at: float, iso_x: float, acc_vert: float, yaw: float = 0.16,
            profile: str = "conventional", by: str = "bob") -> dict[str, Any]:
    """A stored daily result as igrtd's qa_results gives it (/tmp/qa/q3-api.md)."""
    iso_limit = 1.0 if profile == "srs" else 2.0
    iso = [iso_x, 0.02, -0.05]
    checks = [_check("iso_coincidence", "vector", round(math.hypot(*iso), 4), iso_limit),
              _check("positioning", "lat", 0.08, 1.0), _check("positioning", "vert", acc_vert, 1.0),
              _check("repeatability", "vert", 0.04, 1.0),
              _check("positioning", "yaw", yaw, 1.0, "deg")]
    return {"id": rid, "room": "tr1", "kind": "daily", "profile": profile, "at": at, "by": by,
            "passed": all(c["passed"] for c in checks), "checks": checks,
            "iso_offset_mm": iso, "session": f"qa-{rid}"}


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("igrtctl: ") and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ report
class Cells(HTMLParser):
    """Every numeric cell of the report: (table id, check, axis, field) -> [text]."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.cell: tuple[str, str, str, str] | None = None
        self.cells: dict[tuple[str, str, str, str], list[str]] = {}
        self.spans: dict[str, str] = {}
        self._span: str | None = None
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "td" and a.get("data-check") is not None:
            self.cell = (self.table or "", a["data-check"] or "", a.get("data-axis") or "",
                         a.get("data-field") or "")
        elif tag == "span" and a.get("id"):
            self._span = a["id"]
        elif tag == "img":
            self.images.append(a.get("src") or "")

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cells.setdefault(self.cell, []).append(data)
            self.cell = None
        if self._span is not None:
            self.spans[self._span] = data
            self._span = None

    def numbers(self, table: str, check: str, axis: str, field: str = "value") -> list[float]:
        return [float(v) for v in self.cells.get((table, check, axis, field), [])]


def _read(path: Path) -> Cells:
    cells = Cells()
    cells.feed(path.read_text())
    return cells


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """Three days of results, newest first as igrtd answers; day 2 failed on vert."""
    results = [_result(3, T0 + 2 * DAY, 0.71, 0.31), _result(2, T0 + DAY, 0.69, 1.42),
               _result(1, T0, 0.70, 0.28)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": results}))
    return path


def test_report_holds_the_stored_numbers(stored: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert igrtctl(["qa", "report", "--out", str(out), "--results", str(stored)]) == ExitCode.OK
    assert "3 results, 1 failed checks" in capsys.readouterr().out
    page = _read(out / "index.html")
    assert page.spans["result-count"] == "3" and page.spans["failed-count"] == "1"
    # The latest result, check by check, and its imaging-isocentre offset per axis.
    assert page.numbers("latest-checks", "iso_offset", "x") == [0.71]
    assert page.numbers("latest-checks", "iso_offset", "x", "limit") == [2.0]
    assert page.numbers("latest-checks", "iso_coincidence", "vector") == [0.712]
    assert page.numbers("latest-checks", "positioning", "vert") == [0.31]
    assert page.numbers("latest-checks", "positioning", "yaw") == [0.16]
    # The last failures: day 2's vertical positioning, beyond its 1 mm.
    assert page.numbers("last-failures", "positioning", "vert") == [1.42]
    assert page.numbers("last-failures", "positioning", "vert", "limit") == [1.0]
    assert not page.numbers("last-failures", "iso_offset", "x")
    # The trend of each axis, oldest first, one row per day.
    assert page.numbers("trend-x", "iso_offset", "x") == [0.70, 0.69, 0.71]
    assert page.numbers("trend-vert", "positioning", "vert") == [0.28, 1.42, 0.31]
    assert page.numbers("trend-vert", "repeatability", "vert") == [0.04, 0.04, 0.04]
    assert page.numbers("trend-yaw", "positioning", "yaw") == [0.16, 0.16, 0.16]
    # One chart per axis, each drawn: the tolerance band, and the failure marked on vert.
    assert sorted(page.images) == sorted(
        f"trend-{a}.png" for a in ("vector", "x", "y", "z", "lat", "vert", "yaw"))
    vert = Image.open(out / "trend-vert.png").convert("RGB")
    assert vert.size == (760, 360)
    colours = {c for _, c in vert.getcolors(1 << 20) or []}
    assert FAIL in colours and (222, 242, 222) in colours
    x = Image.open(out / "trend-x.png").convert("RGB")
    assert FAIL not in {c for _, c in x.getcolors(1 << 20) or []}


def test_report_counts_aborted_runs_without_charting_them(tmp_path: Path) -> None:
    results = [{"id": 9, "kind": "daily", "aborted": True, "passed": False, "at": T0 + 3 * DAY},
               _result(1, T0, 0.70, 0.28, profile="srs")]
    files = write_report(results, tmp_path / "r")
    page = _read(files.html)
    assert page.spans["aborted-count"] == "1" and page.spans["result-count"] == "1"
    assert page.numbers("latest-checks", "iso_offset", "x", "limit") == [1.0]
    assert "room tr1" in files.html.read_text()


def test_report_from_a_file_of_aborted_runs_only_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"id": 1, "kind": "daily", "aborted": True, "at": T0}]))
    assert igrtctl(["qa", "report", "--out", str(tmp_path / "o"), "--results", str(path)]) == 1
    assert "no completed daily QA results" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("content, expect", [
    ("not json", "not JSON"),
    ('{"results": 3}', "expected a list of results"),
    ('[{"id": 1, "kind": "daily", "checks": []}]', "without a time"),
    (json.dumps([{"id": 1, "at": 1.0, "checks": [{"name": "a", "axis": "x", "value": "x",
                                                  "limit": 1}]}]), "not a finite number"),
])
def test_unreadable_results_are_one_line_usage_errors(
        content: str, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    assert igrtctl(["qa", "report", "--out", str(tmp_path / "o"), "--results",
                    str(path)]) == ExitCode.USAGE
    assert expect in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("argv, expect", [
    (["qa", "daily"], "--imaging"),
    (["qa", "daily", "--imaging", "film"], "invalid choice"),
    (["qa", "daily", "--imaging", "sim"], "--run-dir DIR, --control-socket PATH"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--control-socket", "/b"],
     "not allowed with"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--rate", "5"], "10..100 Hz"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--step-mm", "40"], "envelope"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--step-deg", "nan"], "envelope"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--travel-mm", "20"], "--travel-mm"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--travel-mm", "inf"], "--travel-mm"),
    (["qa", "daily", "--imaging", "sim", "--run-dir", "/a", "--profile", "loose"],
     "invalid choice"),
    (["qa", "couch-sag", "--imaging", "sim", "--run-dir", "/a", "--extensions", "0,300"],
     "at least two"),
    (["qa", "couch-sag", "--imaging", "sim", "--run-dir", "/a", "--extensions", "0,300,x"],
     "comma-separated numbers"),
    (["qa", "couch-sag", "--imaging", "sim", "--run-dir", "/a", "--loads", "0,900"], "0..300"),
    (["qa", "couch-sag", "--imaging", "sim", "--run-dir", "/a", "--loads", "80,80"], "twice"),
    (["qa", "calibrate", "--revert", "2"], "--reason"),
    (["qa", "calibrate", "--approve", "0"], "not a calibration version"),
    (["qa", "calibrate", "--approve", "2", "--revert", "1"], "not allowed with"),
    (["qa", "calibrate", "--reason", "short"], "8..256"),
    (["qa", "report"], "--out"),
    (["qa", "report", "--out", "/tmp/x", "--limit", "0"], "1..500"),
    (["qa"], "required"),
    (["--user", "bob", "qa", "bogus"], "invalid choice"),
])
def test_bad_options_are_one_line_usage_errors_and_nothing_is_sent(
        argv: list[str], expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Were anything sent, igrtd's absence would make it UNREACHABLE, not USAGE.
    monkeypatch.setenv("IGRT_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.delenv("IGRT_SIM_CONTROL", raising=False)
    assert igrtctl(argv) == ExitCode.USAGE
    assert expect in _one_line(capsys.readouterr().err)


def test_no_igrtd_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert igrtctl(["--socket", str(tmp_path / "none.sock"), "qa", "calibrate"]) == 4
    assert "cannot reach igrtd" in _one_line(capsys.readouterr().err)
    # The simulated room's run directory names its igrtd (info.json): absent here.
    assert igrtctl(["qa", "report", "--out", str(tmp_path), "--socket",
                    str(tmp_path / "none.sock")]) == 4
    capsys.readouterr()


@pytest.mark.parametrize("argv, ours", [
    (["qa", "daily", "--imaging", "sim"], True),
    (["--user", "bob", "--key", "k", "qa", "report", "--out", "d"], True),
    (["--user=bob", "--json", "qa", "couch-sag"], True),
    (["qa", "--help"], True),
    (["qa"], True),
    (["qa", "results"], False),  # igrtd's commands, from the registry (room_cli.py)
    (["qa", "start"], False),
    (["--user", "qa", "status"], False),
    (["status"], False),
])
def test_which_qa_words_are_the_orchestrating_tools(argv: list[str], ours: bool) -> None:
    assert qa.is_qa_tool(argv) is ours


def test_global_options_before_qa_reach_the_tool(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "elsewhere.sock"
    assert igrtctl(["--socket", str(sock), "--user", "bob", "qa", "calibrate"]) == 4
    assert str(sock) in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------ the daily flow
class FakeLink:
    """igrtd as the qa tools see it: records each command; answers like /tmp/qa/q3-api.md."""

    def __init__(self, refuse: dict[str, str] | None = None, passed: bool = True) -> None:
        self.user = "bob"
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse or {}
        self.passed = passed
        self.moves = 0

    async def call(self, cmd: str, **args: Any) -> Reply:
        self.sent.append((cmd, args))
        if cmd in self.refuse:
            return Reply(False, {}, "refused", self.refuse[cmd])
        if cmd == "qa_start":
            return Reply(True, {"id": "qa-1", "home": {"lat": 1.0, "long": 2.0, "vert": 3.0,
                                                       "yaw": 0.0, "pitch": 0.0, "roll": 0.0}})
        if cmd == "status":
            return Reply(True, {"interlocks": {"motion_enable_pressed": True}})
        if cmd == "qa_move":
            self.moves += 1
            return Reply(True, {"id": f"P{self.moves}", "status": "confirmed"})
        if cmd == "qa_image":
            if args["label"] == "baseline":
                return Reply(True, {"bb_mm": [4.7, -3.0, 2.5], "iso_offset_mm": [-0.7, 0, 0]})
            return Reply(True, {"shift": [10.02, 0, 0, 0, 0, 0],
                                "measured": {"lat": 10.02, "long": 0.0, "vert": -0.01,
                                             "yaw": 0.0, "pitch": 0.05, "roll": 0.0}})
        if cmd == "qa_finish" and not args.get("abort"):
            return Reply(True, _result(7, T0, 0.7 if self.passed else 2.4, 0.2))
        return Reply(True, {})

    async def hold(self, proposal_id: str, rate_hz: float, progress: Any) -> dict[str, Any]:
        self.sent.append(("hold", {"proposal_id": proposal_id}))
        return {"state": "DONE", "done": True}


class FakeSim:
    def __init__(self) -> None:
        self.ops: list[tuple[str, Any]] = []
        self.control = Path("/run/sim/control.sock")

    def acquire(self, n: int, label: str) -> str:
        self.ops.append(("acquire_cbct", label))
        return f"/run/sim/images/{n:02d}.mha"

    def pendant(self, pressed: bool) -> None:
        self.ops.append(("pendant", pressed))

    def op(self, op: str, args: Any = None, timeout_s: float = 30.0) -> dict[str, Any]:
        self.ops.append((op, args))
        return {"ok": True}


def _daily_args(**changes: Any) -> argparse.Namespace:
    a = argparse.Namespace(tool="daily", rate=20.0, step_mm=10.0, step_deg=1.0, profile="srs",
                           json=False, travel_mm=0.0)
    for k, v in changes.items():
        setattr(a, k, v)
    return a


def test_daily_travels_each_translation_alone_after_the_pattern() -> None:
    link, sim = FakeLink(), FakeSim()
    a = _daily_args(travel_mm=50.0)
    code = asyncio.run(qa_daily.daily(a, link, sim))  # type: ignore[arg-type]
    assert code == ExitCode.OK
    moves = [a["target"] for c, a in link.sent if c == "qa_move"]
    assert len(moves) == 24 + 9
    # From the QA home (1, 2, 3 mm): +50, -50, home for lat, long, vert in turn.
    assert [(m["lat"], m["long"], m["vert"]) for m in moves[24:]] == [
        (51.0, 2.0, 3.0), (-49.0, 2.0, 3.0), (1.0, 2.0, 3.0),
        (1.0, 52.0, 3.0), (1.0, -48.0, 3.0), (1.0, 2.0, 3.0),
        (1.0, 2.0, 53.0), (1.0, 2.0, -47.0), (1.0, 2.0, 3.0)]


def test_daily_sends_the_pattern_through_igrtd_and_prints_each_check(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safety.qa")
    link, sim = FakeLink(), FakeSim()
    code = asyncio.run(qa_daily.daily(_daily_args(), link, sim))  # type: ignore[arg-type]
    assert code == ExitCode.OK
    names = [c for c, _ in link.sent]
    assert names[0] == "qa_start" and link.sent[0][1] == {"kind": "daily", "profile": "srs"}
    assert names[1] == "qa_image" and link.sent[1][1]["label"] == "baseline"
    assert names[-1] == "qa_finish" and link.sent[-1][1] == {}
    pattern = qa_daily.daily_pattern(10.0, 1.0)
    moves = [a["target"] for c, a in link.sent if c == "qa_move"]
    assert len(moves) == len(pattern) == 24
    # Absolute targets: the QA home plus each step of the pattern.
    assert moves[0] == {"lat": 11.0, "long": 2.0, "vert": 3.0, "yaw": 0.0, "pitch": 0.0,
                        "roll": 0.0}
    assert {m["lat"] for m in moves} == {11.0, 1.0, -9.0}
    # Each move is held to run, then imaged; the pendant is pressed for the moves only.
    holds = [a["proposal_id"] for c, a in link.sent if c == "hold"]
    assert holds == [f"P{k}" for k in range(1, 25)]
    assert sim.ops[0] == ("acquire_cbct", "baseline") and sim.ops[1] == ("pendant", True)
    assert sim.ops[-1] == ("pendant", False)
    assert sum(op == "acquire_cbct" for op, _ in sim.ops) == 25
    out = capsys.readouterr().out
    assert "pendant (sim op pendant)" in out
    assert "measured lat +10.02 long +0.00 vert -0.01 mm, yaw +0.00 pitch +0.05 roll +0.00 deg" in out
    assert "imaging isocentre offset (-0.70, +0.00, +0.00) mm" in out
    assert "offset from the treatment isocentre: x +0.700, y +0.020, z -0.050 mm" in out
    row = next(line for line in out.splitlines() if line.startswith("iso_coincidence"))
    assert row.split()[1:] == ["vector", "0.702", "2.000", "mm", "PASS"]
    assert "QA PASSED" in out


def test_a_failed_daily_exits_1_and_says_clinical_moves_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safety.qa")
    link, sim = FakeLink(passed=False), FakeSim()
    code = asyncio.run(qa_daily.daily(_daily_args(), link, sim))  # type: ignore[arg-type]
    assert code == ExitCode.REFUSED
    out = capsys.readouterr().out
    assert "QA FAILED: 1 of 5 checks beyond tolerance" in out and "clinical" in out


def test_a_refused_move_aborts_the_run_and_lets_go_of_the_pendant(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safety.qa")
    link, sim = FakeLink(refuse={"qa_move": "lat 30 mm beyond the QA envelope 25 mm"}), FakeSim()
    code = asyncio.run(qa_daily.daily(_daily_args(), link, sim))  # type: ignore[arg-type]
    assert code == ExitCode.REFUSED
    assert "qa_move refused (refused): lat 30 mm beyond" in _one_line(capsys.readouterr().err)
    cmd, args = link.sent[-1]
    assert cmd == "qa_finish" and args["abort"] is True and 8 <= len(args["reason"]) <= 256
    assert ("pendant", {"pressed": False}) in sim.ops


def test_a_refused_start_sends_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safety.qa")
    link, sim = FakeLink(refuse={"qa_start": "a clinical session is open"}), FakeSim()
    assert asyncio.run(qa_daily.daily(_daily_args(), link, sim)) == 1  # type: ignore[arg-type]
    assert [c for c, _ in link.sent] == ["qa_start"] and sim.ops == []
    assert "a clinical session is open" in _one_line(capsys.readouterr().err)
