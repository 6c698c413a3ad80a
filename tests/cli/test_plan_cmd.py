"""`igrtctl plan`: exit codes, the JSON contract, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from daemon.igrtctl.plan import run_plan

ROOT = Path(__file__).resolve().parents[2]
SHIFT = [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]]  # anatomy at +(1, 2, 3) mm


@pytest.fixture
def reg(tmp_path: Path):
    def write(matrix=SHIFT, name: str = "reg.json", raw: str | None = None) -> str:
        p = tmp_path / name
        p.write_text(raw if raw is not None else json.dumps({"matrix": matrix}))
        return str(p)

    return write


def args(registration: str, *extra: str, couch: str = "0,0,0,0,0,0") -> list[str]:
    return ["--registration", registration, "--iso", "10,-20,30", "--patient-position", "HFS",
            "--couch", couch, *extra]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_plan(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("igrtctl plan: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in err


def test_plan_prints_the_contract_json_and_exits_0(reg, capsys) -> None:
    code, out, err = run(args(reg(), "--json"), capsys)
    assert code == 0 and err == ""
    d = json.loads(out)
    assert list(d) == ["target", "delta", "residual_rotation_deg", "residual_iso_mm",
                       "verdict", "reasons"]
    assert d["target"] == {"lat": -1.0, "long": -3.0, "vert": 2.0,
                           "yaw": 0.0, "pitch": 0.0, "roll": 0.0}
    assert d["verdict"] == "needs_confirmation"


def test_plan_json_is_a_single_line(reg, capsys) -> None:
    _, out, _ = run(args(reg(), "--json"), capsys)
    assert out.count("\n") == 1


def test_human_report_names_verdict_target_and_reasons(reg, capsys) -> None:
    code, out, _ = run(args(reg()), capsys)
    assert code == 0
    assert "verdict:  needs_confirmation" in out
    assert "lat -1.00  long -3.00  vert +2.00 mm" in out
    assert "long 3.00 mm exceeds tolerance 1.00 mm" in out


def test_refused_plan_exits_3_and_still_explains(reg, capsys) -> None:
    code, out, _ = run(args(reg(), "--json", couch="0,0,0,0,3.5,0"), capsys)
    assert code == 3
    d = json.loads(out)
    assert d["verdict"] == "refused"
    assert d["target"]["pitch"] == 3.5
    assert "target pitch 3.50 deg outside limit -3.00..3.00 deg" in d["reasons"]


def test_negative_numbers_are_accepted_as_option_values(reg, capsys) -> None:
    code, out, _ = run(["--registration", reg(), "--iso", "-10,-20,-30", "--patient-position",
                        "hfs", "--couch", "-5,0,0,0,0,0", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["target"]["lat"] == -6.0


def test_axes_option_reduces_the_degrees_of_freedom(reg, capsys) -> None:
    code, out, _ = run(args(reg(), "--axes", "lat,long,yaw", "--json"), capsys)
    d = json.loads(out)
    assert code == 0
    assert d["target"]["vert"] == 0.0
    # DICOM +2 mm posterior is 2 mm low in the room for HFS; vert cannot fix it.
    assert d["residual_iso_mm"] == {"x": 0.0, "y": 0.0, "z": -2.0}


def test_pivot_option_changes_the_compensating_translation(reg, capsys) -> None:
    c, s = np.cos(np.radians(2)), np.sin(np.radians(2))
    roll = [[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # about DICOM z through 0
    path = reg(roll)
    argv = ["--registration", path, "--iso", "0,0,0", "--patient-position", "HFS",
            "--couch", "0,0,0,0,0,0", "--json"]
    _, out_default, _ = run(argv, capsys)
    _, out_far, _ = run([*argv, "--pivot", "0,0,-1000"], capsys)
    assert json.loads(out_default)["target"]["lat"] == pytest.approx(150 * s, abs=1e-6)
    assert json.loads(out_far)["target"]["lat"] == pytest.approx(1000 * s, abs=1e-6)


def test_couch_model_file_replaces_the_default_limits(reg, tmp_path, capsys) -> None:
    model = {"ranges": {"lat": [-1, 1], "long": [-600, 600], "vert": [-400, 200],
                        "yaw": [-95, 95], "pitch": [-3, 3], "roll": [-3, 3]}}
    (tmp_path / "couch.json").write_text(json.dumps(model))
    code, out, _ = run(args(reg(), "--couch-model", str(tmp_path / "couch.json"), "--json",
                            couch="-0.5,0,0,0,0,0"), capsys)
    assert code == 3
    assert "target lat -1.50 mm outside limit -1.00..1.00 mm" in json.loads(out)["reasons"]


BAD_ARGS = {
    "missing file": (["--registration", "/nonexistent/reg.json"], "cannot read registration file"),
    "iso with two numbers": (["--iso", "1,2"], "--iso needs 3 comma-separated numbers in mm"),
    "iso not numbers": (["--iso", "a,b,c"], "--iso needs 3"),
    "iso infinite": (["--iso", "inf,0,0"], "--iso values must be finite"),
    "couch with five numbers": (["--couch", "0,0,0,0,0"], "--couch needs 6"),
    "unknown position": (["--patient-position", "SUPINE"], "unknown patient position 'SUPINE'"),
    "unknown axis": (["--axes", "lat,tilt"], "unknown axis 'tilt'"),
    "empty axes": (["--axes", ","], "--axes needs at least one axis"),
    "bad pivot": (["--pivot", "0,0"], "--pivot needs 3"),
    "unknown option": (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "abbreviated option": (["--reg", "x"], "unrecognized arguments"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARGS))
def test_unusable_arguments_exit_2_with_one_line(name: str, reg, capsys) -> None:
    override, expected = BAD_ARGS[name]
    argv = args(reg())
    if override[0] in argv:
        i = argv.index(override[0])
        argv[i:i + 2] = override
    else:
        argv += override
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, expected)


def test_missing_required_arguments_exit_2_with_one_line(capsys) -> None:
    code, _, err = run(["--json"], capsys)
    assert code == 2
    assert_one_line_error(err, "the following arguments are required")


BAD_FILES = {
    "not JSON": ("{not json", "is not valid JSON: Expecting property name"),
    "no matrix key": ('{"transform": []}', 'must be a JSON object with a "matrix" key'),
    "wrong shape": ('{"matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}', "matrix must be 4 rows of 4"),
    "string entry": ('{"matrix": [[1,0,0,"x"],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}', "is not a number"),
    "scaled": ('{"matrix": [[1.1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}', "is not rigid"),
    "reflection": ('{"matrix": [[-1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}', "is a reflection"),
    "bad last row": ('{"matrix": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,1,1]]}', "last row"),
    "NaN": ('{"matrix": [[1,0,0,NaN],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}', "only finite numbers"),
    "binary junk": (None, "neither DICOM nor UTF-8 JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unusable_registration_file_exits_2_with_one_line(name: str, reg, tmp_path, capsys):
    raw, expected = BAD_FILES[name]
    if raw is None:
        path = tmp_path / "junk.bin"
        path.write_bytes(b"\xff\xfe\x00garbage")
        path = str(path)
    else:
        path = reg(raw=raw)
    code, out, err = run(args(path, "--json"), capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, expected)


def test_unusable_couch_model_file_exits_2_with_one_line(reg, tmp_path, capsys) -> None:
    (tmp_path / "couch.json").write_text('{"ranges": {"lat": [5, 1]}}')
    code, _, err = run(args(reg(), "--couch-model", str(tmp_path / "couch.json")), capsys)
    assert code == 2
    assert_one_line_error(err, "couch model: ranges.lat: min 5 must be less than max 1")


def dicom_file(tmp_path: Path) -> str:
    path = tmp_path / "reg.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return str(path)


def test_dicom_registration_goes_through_the_imaging_hook(tmp_path, monkeypatch, capsys) -> None:
    seen: list[str] = []

    def read_registration_matrix(path: str) -> np.ndarray:
        seen.append(path)
        return np.array(SHIFT, dtype=float)

    fake = types.ModuleType("imaging.dicom_reg")
    fake.read_registration_matrix = read_registration_matrix  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "imaging.dicom_reg", fake)
    path = dicom_file(tmp_path)
    code, out, _ = run(args(path, "--json"), capsys)
    assert code == 0 and seen == [path]
    assert json.loads(out)["target"]["lat"] == -1.0


def test_dicom_registration_without_the_imaging_module_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "imaging.dicom_reg", None)  # import now raises ImportError
    code, _, err = run(args(dicom_file(tmp_path)), capsys)
    assert code == 2
    assert_one_line_error(err, "DICOM registration files are not supported here")


def test_dicom_reader_failure_exits_2_with_one_line(tmp_path, monkeypatch, capsys) -> None:
    def read_registration_matrix(path: str) -> np.ndarray:
        raise KeyError("no RegistrationSequence\nsecond line")

    fake = types.ModuleType("imaging.dicom_reg")
    fake.read_registration_matrix = read_registration_matrix  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "imaging.dicom_reg", fake)
    code, _, err = run(args(dicom_file(tmp_path)), capsys)
    assert code == 2
    assert_one_line_error(err, "cannot use DICOM registration", "no RegistrationSequence")


def test_help_exits_0(capsys) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "--registration FILE" in out


def test_a_real_process_shows_no_traceback_for_bad_input(tmp_path) -> None:
    bad = tmp_path / "reg.json"
    bad.write_text('{"matrix": "identity"}')
    code = "import sys; from daemon.igrtctl.plan import run_plan; sys.exit(run_plan(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args(str(bad))],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_plan_reports_the_paths_clearance_and_closest_pair(reg, capsys) -> None:
    code, out, _ = run(args(reg()), capsys)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("collision"))
    assert "gantry 0 deg, arms parked" in line and "patient and collimator" in line
    assert "margin 50 mm" in line and "igrtd would refuse" not in out


def test_plan_says_when_igrtd_would_refuse_the_path_at_that_gantry_angle(reg, capsys) -> None:
    # The couch 80 mm down with the gantry at 135 deg: the couch top within 15 mm of the
    # collimator (docs/collision.md). The verdict is the plan's; the report says why igrtd
    # would refuse the move in that room.
    code, out, _ = run(args(reg(), "--gantry-deg", "135", couch="0,0,-80,0,0,0"), capsys)
    assert code == 0
    assert "igrtd would refuse: couch top and collimator: clearance" in out
    assert "below the 50 mm margin" in out


def test_plan_refuses_a_gantry_angle_outside_the_circle_in_one_line(reg, capsys) -> None:
    code, _, err = run(args(reg(), "--gantry-deg", "400"), capsys)
    assert code == 2
    assert_one_line_error(err, "--gantry-deg 400 deg is outside 0..360 deg")
