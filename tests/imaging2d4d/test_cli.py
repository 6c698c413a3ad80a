"""igrtctl register2d / register4d: JSON out, exit codes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from daemon.igrtctl.register2d import run_register2d, run_register4d
from safety.pose import Pose
from sim.breathing import TUMOUR_CENTRE_MM, acquire_4d_cbct, breathing_phantom
from sim.imager import planning_ct, setup_placement, true_registration_matrix
from sim.kv import kv_through_transform, write_kv

from .conftest import ISO, PAIR

ISO_ARG = ",".join(str(v) for v in ISO)


@pytest.fixture(scope="module")
def files(tmp_path_factory, phantom, plan_ct):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("kv")
    sitk.WriteImage(plan_ct, str(d / "plan.mha"))
    a = setup_placement(ISO, "HFS", (3.0, -2.0, 4.0), (0.5, 0.0, 1.0))
    t = true_registration_matrix(a, Pose(), (0, 0, -150), ISO, "HFS")
    kv = write_kv(kv_through_transform(phantom, t, ISO, "HFS", np.random.default_rng(4), PAIR,
                                       voxel_mm=2.0), d)
    return d / "plan.mha", kv, t


def _one_line_error(capsys) -> str:  # type: ignore[no-untyped-def]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_register2d_prints_the_matrix_and_exits_0(files, capsys) -> None:  # type: ignore[no-untyped-def]
    plan, kv, truth = files
    rc = run_register2d(["--plan", str(plan), "--kv", str(kv[0]), "--kv", str(kv[1]),
                         "--iso", ISO_ARG, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert np.allclose(np.array(out["matrix"])[:3, 3], truth[:3, 3], atol=2.0)
    assert out["converged"] is True


def test_register2d_accepts_a_negative_iso_without_equals(files, capsys) -> None:  # type: ignore[no-untyped-def]
    plan, kv, _ = files
    rc = run_register2d(["--plan", str(plan), "--kv", str(kv[0]), "--kv", str(kv[1]),
                         "--iso", "-25,10,-15", "--json", "--overlay",
                         str(plan.parent / "ov.png")])
    assert rc == 0
    assert (plan.parent / "ov.png").stat().st_size > 0


def test_register2d_with_one_kv_image_is_input_error(files, capsys) -> None:  # type: ignore[no-untyped-def]
    plan, kv, _ = files
    assert run_register2d(["--plan", str(plan), "--kv", str(kv[0])]) == 2
    assert "at least 2 --kv" in _one_line_error(capsys)


def test_register2d_missing_kv_file_is_input_error(files, capsys) -> None:  # type: ignore[no-untyped-def]
    plan, kv, _ = files
    assert run_register2d(["--plan", str(plan), "--kv", str(kv[0]), "--kv", "/nope.mha"]) == 2
    assert "/nope.mha" in _one_line_error(capsys)


def test_register2d_kv_without_geometry_is_input_error(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    plan, kv, _ = files
    bare = tmp_path / "bare.mha"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(bare))
    assert run_register2d(["--plan", str(plan), "--kv", str(kv[0]), "--kv", str(bare)]) == 2
    assert "IGRT_SAD" in _one_line_error(capsys)


def test_register2d_bad_iso_is_input_error(files, capsys) -> None:  # type: ignore[no-untyped-def]
    plan, kv, _ = files
    assert run_register2d(["--plan", str(plan), "--kv", str(kv[0]), "--kv", str(kv[1]),
                           "--iso", "1,2"]) == 2
    assert "--iso" in _one_line_error(capsys)


def test_register2d_unreadable_plan_is_input_error(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    _, kv, _ = files
    junk = tmp_path / "junk.mha"
    junk.write_bytes(b"not an image")
    assert run_register2d(["--plan", str(junk), "--kv", str(kv[0]), "--kv", str(kv[1])]) == 2
    _one_line_error(capsys)


def test_register4d_reports_mean_and_amplitude(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    ct = planning_ct(breathing_phantom((0.0, 0.0, 0.0)))
    sitk.WriteImage(ct, str(tmp_path / "plan.mha"))
    a = setup_placement(TUMOUR_CENTRE_MM, "HFS")
    phases, truth = acquire_4d_cbct(np.random.default_rng(3), setup_a_4x4=a, n_phases=6,
                                    size=(96, 96, 48))
    args = ["--plan", str(tmp_path / "plan.mha"), "--iso", ",".join(map(str, TUMOUR_CENTRE_MM)),
            "--json", "--plot", str(tmp_path / "traj.png")]
    for k, ph in enumerate(phases):
        sitk.WriteImage(ph, str(tmp_path / f"p{k}.mha"))
        args += ["--phase", str(tmp_path / f"p{k}.mha")]
    rc = run_register4d(args)
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert np.linalg.norm(np.array(out["mean_position_mm"]) - truth.mean_position_mm) <= 0.5
    assert (tmp_path / "traj.png").stat().st_size > 0


def test_register4d_bad_use_is_input_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert run_register4d(["--plan", "x.mha", "--phase", "p.mha", "--use", "inhale"]) == 2
    assert "--use" in _one_line_error(capsys)
