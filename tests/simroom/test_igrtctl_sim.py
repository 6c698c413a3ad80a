"""`igrtctl sim OP` wraps the control API with igrtctl's exit codes; `igrt-sim ctl`
uses the same client (daemon/igrtctl/sim_control.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.main import main as igrtctl
from sim.cli import main as igrt_sim

from .conftest import SimUp, description, wait_for


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, expect", [
    (["sim", "truth"], "--run-dir DIR, --sim-socket PATH"),
    (["sim", "inject", "--arg", "fault", "--sim-socket", "/nonexistent"], "KEY=VALUE"),
    (["sim", "inject", "--arg", "x=1", "--arg", "x=2", "--sim-socket", "/x"], "given twice"),
    (["sim", "gantry", "--arg", "angle_deg=NaN", "--sim-socket", "/x"], "not a finite number"),
    (["sim", "truth", "--run-dir", "/a", "--sim-socket", "/b"], "not allowed with"),
    (["sim", "truth", "--timeout", "0", "--sim-socket", "/b"], "positive"),
])
def test_bad_input_is_usage(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IGRT_SIM_CONTROL", raising=False)
    assert igrtctl(argv) == ExitCode.USAGE
    assert expect in _one_line(capsys.readouterr().err)


def test_no_room_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert igrtctl(["sim", "truth", "--run-dir", str(tmp_path)]) == ExitCode.UNREACHABLE
    assert "cannot reach the simulated room" in _one_line(capsys.readouterr().err)
    assert igrt_sim(["ctl", "truth", "--run-dir", str(tmp_path)]) == 1
    assert "cannot reach the simulated room" in _one_line(capsys.readouterr().err)


def test_igrtctl_sim_drives_a_room(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    room = SimUp(tmp_path, description(broker={"enabled": False}, kv_imager=False))
    try:
        run_dir = str(room.run_dir)
        assert igrtctl(["sim", "truth", "--run-dir", run_dir, "--compact"]) == ExitCode.OK
        truth = json.loads(capsys.readouterr().out)
        assert "ok" not in truth and truth["plc"]["inputs"]["door_closed"] is True
        monkeypatch.setenv("IGRT_SIM_CONTROL", str(room.control))
        assert igrtctl(["sim", "inject", "--arg", "fault=interlock_open",
                        "--arg", "name=door_closed"]) == ExitCode.OK
        assert json.loads(capsys.readouterr().out)["injected"]["name"] == "door_closed"
        assert igrtctl(["sim", "gantry", "--arg", "angle_deg=400"]) == ExitCode.REFUSED
        assert "360" in _one_line(capsys.readouterr().err)
        assert igrt_sim(["ctl", "inject", "--arg", "fault=interlock_close", "--arg",
                         "name=door_closed", "--socket", str(room.control)]) == 0
        assert igrt_sim(["ctl", "truth", "--arg", "x=NaN", "--run-dir", run_dir]) == 2
        capsys.readouterr()
        # The simulated PLC stretches a brief opening, so the door reads closed a moment later.
        wait_for(lambda: room.ctl("truth")["plc"]["inputs"]["door_closed"], 5, "door closed")
    finally:
        room.stop()
