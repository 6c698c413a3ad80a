"""Scenario files: the schema is current, the shipped library parses, names real
hazards and passes in simulated rooms, a malformed file is one line (exit 2), and a
wrong expectation fails with a readable table and a JUnit failure."""

from __future__ import annotations

import asyncio
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sim import cli
from sim.scenario import SCHEMA_PATH, load_scenario, schema_text, shipped
from sim.scenario_report import table
from sim.scenario_runner import run_files

from .conftest import REPO

LIBRARY_BUDGET_S = 90.0


def test_scenario_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == schema_text(), "run: python -m sim.scenario --write-schema"


def test_the_library_parses_and_names_hazards_of_the_safety_case() -> None:
    hazards = set(re.findall(r"^\| (H-[A-Z-]+) \|", (REPO / "docs" / "safety-case.md")
                             .read_text(), re.MULTILINE))
    paths = shipped()
    assert 10 <= len(paths) <= 16
    for path in paths:
        scenario = load_scenario(path)
        assert scenario.hazard in hazards, f"{path.name}: {scenario.hazard} is no hazard row"
        assert any(s.expect is not None for s in scenario.steps), path.name


@pytest.mark.parametrize(("text", "needle"), [
    ("{not json", "not a scenario"),
    (('{"format": "igrt-sim-scenario/1", "name": "x", "hazard": "H-HOLD", "steps": '
     '[{"at": 0, "expect": {"state": "FAULT"}}]}'), "state takes one of within_ms, within_s"),
    (('{"format": "igrt-sim-scenario/1", "name": "x", "hazard": "H-HOLD", "steps": '
     '[{"at": 1, "hold": {}}, {"at": 0.5, "hold_stop": {}}]}'), "list steps in time order"),
    (('{"format": "igrt-sim-scenario/1", "name": "x", "hazard": "H-HOLD", "steps": '
     '[{"at": 0, "hold": {}, "hold_stop": {}}]}'), "exactly one of"),
    (('{"format": "igrt-sim-scenario/1", "name": "x", "hazard": "H-HOLD", "steps": '
     '[{"at": 1e999, "hold": {}}]}'), ""),
    ('{"format": "igrt-sim-room/1"}', "format"),
])
def test_a_malformed_scenario_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert cli.main(["run", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(bad) in err and needle in err


def test_the_whole_library_passes_within_its_budget() -> None:
    t0 = time.monotonic()
    results = asyncio.run(run_files(shipped()))
    elapsed = time.monotonic() - t0
    assert all(r.passed for r in results), table(results)
    assert elapsed < LIBRARY_BUDGET_S, f"the library took {elapsed:.0f} s"


def test_a_wrong_expectation_fails_with_a_table_row_and_a_junit_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads((REPO / "sim" / "scenarios" / "couch-runaway-while-idle.json").read_text())
    doc["steps"].append({"at": 0.3, "expect": {"state": "DONE", "within_s": 0.3}})
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(doc))
    junit = tmp_path / "out.xml"
    assert cli.main(["run", str(path), "--junit", str(junit), "--run-dir",
                     str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    fail = [line for line in out.splitlines() if line.rstrip().endswith("FAIL")]
    assert len(fail) == 1 and "state DONE within 0.3 s" in fail[0] and "FAULT" in fail[0]
    assert "-> expected state DONE within 0.3 s; igrtd was still FAULT" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failures = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert len(failures) == 1
    message = failures[0].find("failure").get("message")  # type: ignore[union-attr]
    assert "expected state DONE" in str(message) and "FAULT" in str(message)
    assert (tmp_path / "runs" / "01-wrong" / "igrtd.log").exists()  # kept for diagnosis
