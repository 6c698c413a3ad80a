"""`igrtctl register` and `igrtctl reg show`: JSON contract and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reg3d_support import ISO

from daemon.igrtctl.register import run_reg_show, run_register
from imaging.dicom_reg import write_registration
from imaging.volumes import ImageIdentity, write_dicom_series

ISO_ARG = ",".join(str(v) for v in ISO)


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def test_register_prints_the_contract_json_and_exits_0(image_files, setup_error, capsys) -> None:
    plan, daily = image_files
    code = run_register(["--fixed", str(plan), "--moving", str(daily), "--iso", ISO_ARG,
                         "--json"])
    data = _json(capsys)
    assert code == 0
    assert {"matrix", "translation_mm", "rotation_deg", "metric", "seconds",
            "converged"} <= set(data)
    assert data["converged"] is True
    assert np.allclose(np.array(data["matrix"]), setup_error, atol=0.2)


def test_register_writes_the_overlay_when_asked(image_files, tmp_path: Path, capsys) -> None:
    plan, daily = image_files
    png = tmp_path / "ov.png"
    code = run_register(["--fixed", str(plan), "--moving", str(daily), "--iso", ISO_ARG,
                         "--overlay", str(png), "--json"])
    assert code == 0 and png.stat().st_size > 10_000
    assert _json(capsys)["overlay"] == str(png)


def test_register_reads_dicom_series_and_exports_a_reg(tmp_path: Path, plan_ct, make_cbct,
                                                       setup_error, capsys) -> None:
    plan_id = write_dicom_series(plan_ct, tmp_path / "plan", ImageIdentity(patient_id="PAT-9"))
    daily_id = write_dicom_series(make_cbct(setup_error), tmp_path / "cbct",
                                  ImageIdentity(patient_id="PAT-9"))
    reg = tmp_path / "reg.dcm"
    code = run_register(["--fixed", str(tmp_path / "plan"), "--moving", str(tmp_path / "cbct"),
                         "--iso", ISO_ARG, "--reg-out", str(reg), "--json"])
    capsys.readouterr()
    assert code == 0
    assert run_reg_show([str(reg), "--json"]) == 0
    shown = _json(capsys)
    assert shown["patient_id"] == "PAT-9"
    assert shown["fixed_frame_of_reference_uid"] == plan_id.frame_of_reference_uid
    assert shown["moving_frame_of_reference_uid"] == daily_id.frame_of_reference_uid
    assert np.allclose(np.array(shown["matrix"]), setup_error, atol=0.2)


def test_register_refuses_a_poor_match_with_exit_3(image_files, tmp_path: Path, capsys) -> None:
    plan, daily = image_files
    img = sitk.ReadImage(str(daily))
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(
        0, 100, sitk.GetArrayViewFromImage(img).shape).astype(np.float32))
    noise.CopyInformation(img)
    sitk.WriteImage(noise, str(tmp_path / "noise.mha"))
    code = run_register(["--fixed", str(plan), "--moving", str(tmp_path / "noise.mha"),
                         "--iso", ISO_ARG, "--json"])
    captured = capsys.readouterr()
    assert code == 3
    assert json.loads(captured.out)["converged"] is False
    assert "refused" in captured.err


@pytest.mark.parametrize("args, message", [
    (["--fixed", "/nonexistent/plan.mha", "--moving", "/nonexistent/d.mha"], "does not exist"),
    (["--moving", "x.mha"], "required"),
    (["--fixed", "a", "--moving", "b", "--iso", "1,2"], "--iso"),
])
def test_register_bad_input_is_one_line_on_stderr_and_exit_2(args, message, capsys) -> None:
    code = run_register(args + ["--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err and "Traceback" not in err


def test_reg_show_prints_the_contract_json(tmp_path: Path, setup_error, capsys) -> None:
    path = tmp_path / "reg.dcm"
    write_registration(path, setup_error, patient_id="PAT-1", patient_name="DOE^J",
                       fixed_frame_of_reference_uid="1.2.3.1",
                       moving_frame_of_reference_uid="1.2.3.2")
    assert run_reg_show([str(path), "--json"]) == 0
    data = _json(capsys)
    assert {"matrix", "patient_id", "fixed_frame_of_reference_uid",
            "moving_frame_of_reference_uid"} <= set(data)
    assert np.abs(np.array(data["matrix"]) - setup_error).max() < 1e-6


def test_reg_show_of_a_non_registration_is_exit_2_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"nonsense")
    assert run_reg_show([str(path), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err
