"""`igrtctl register` and `igrtctl reg show`: offline 3D registration tools.

    igrtctl register --fixed PLAN --moving DAILY [--iso X,Y,Z] [--overlay PNG]
                     [--reg-out FILE.dcm --patient-id ID ...] [--json]
    igrtctl reg show FILE [--json]

PLAN / DAILY: any image SimpleITK reads (.mha, .nrrd, .nii.gz) or a DICOM
series directory. Exit status (daemon/igrtctl/exits.py): 0 converged, 3
VERDICT_REFUSED (did not converge / poor match; the JSON says why), 2 USAGE
(unusable input; one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

from daemon.igrtctl.args import join_negative_values, triple
from daemon.igrtctl.exits import ArgParser, ExitCode, UsageError, err, usage_exit
from daemon.jsontypes import JsonObject

if TYPE_CHECKING:
    import numpy as np

    from imaging.volumes import LoadedImage


def quiet_itk() -> None:
    # ITK prints warnings (e.g. "No Series were found") straight to stderr; the CLI
    # reports problems itself, in one line.
    import SimpleITK as sitk

    sitk.ProcessObject.GlobalWarningDisplayOff()
    logging.getLogger("imaging").setLevel(logging.ERROR)


def run_register(argv: list[str]) -> int:
    p = ArgParser(prog="igrtctl register", description="Rigid CBCT-to-planning-CT registration.")
    p.add_argument("--fixed", required=True, help="planning CT (file or DICOM series dir)")
    p.add_argument("--moving", required=True, help="daily image (file or DICOM series dir)")
    p.add_argument("--iso", help="isocentre X,Y,Z in planning mm (default: daily image centre)")
    p.add_argument("--overlay", help="write a before/after review PNG here")
    p.add_argument("--reg-out", help="also write the accepted result as a DICOM REG file")
    p.add_argument("--patient-id", help="patient ID for --reg-out (default: from the images)")
    p.add_argument("--patient-name", default="", help="patient name for --reg-out")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    def body() -> int:
        args = p.parse_args(join_negative_values(list(argv), ("--iso",)))
        return _register(args, triple(args.iso, "--iso") if args.iso else None)

    return usage_exit(body)


def _register(args: argparse.Namespace, iso: tuple[float, float, float] | None) -> int:
    quiet_itk()
    from imaging.registration import RegistrationFailed, register_rigid
    from imaging.volumes import read_image

    fixed = read_image(args.fixed)
    moving = read_image(args.moving)
    if (fixed.patient_id and moving.patient_id and fixed.patient_id != moving.patient_id):
        raise UsageError(
            f"patient mismatch: planning image is {fixed.patient_id!r}, "
            f"daily image is {moving.patient_id!r}"
        )
    try:
        result = register_rigid(fixed.image, moving.image, iso_mm=iso)
    except RegistrationFailed as exc:
        failed = {"matrix": None, "converged": False, "reason": str(exc)}
        print(json.dumps(failed) if args.json else f"REFUSED: {exc}")
        err(f"registration refused: {exc}")
        return ExitCode.VERDICT_REFUSED
    out: JsonObject = result.to_json_dict()
    if args.overlay:
        from imaging.overlay import write_overlay_png
        from imaging.registration import image_centre

        centre = iso if iso is not None else image_centre(moving.image)
        try:
            write_overlay_png(fixed.image, moving.image, result.matrix, centre, args.overlay)
        except OSError as exc:
            raise UsageError(f"cannot write overlay {args.overlay}: {exc.strerror}") from None
        out["overlay"] = str(args.overlay)
    if args.reg_out:
        if not result.converged:
            out["reg_out"] = None
        else:
            out["reg_out"] = _write_reg(args, fixed, moving, result.matrix)
    if args.json:
        print(json.dumps(out))
    else:
        print(result.summary())
    if not result.converged:
        err(f"registration refused: {result.reason}")
        return ExitCode.VERDICT_REFUSED
    return ExitCode.OK


def _write_reg(args: argparse.Namespace, fixed: LoadedImage, moving: LoadedImage,
               matrix: np.ndarray) -> str:
    from imaging.dicom_reg import write_registration

    patient = args.patient_id or fixed.patient_id or moving.patient_id
    if not patient:
        raise UsageError("--reg-out needs --patient-id (the images carry no patient ID)")
    if not fixed.frame_of_reference_uid or not moving.frame_of_reference_uid:
        raise UsageError("--reg-out needs DICOM images with frame of reference UIDs")
    try:
        write_registration(
            args.reg_out, matrix, patient_id=patient,
            patient_name=args.patient_name or fixed.identity.patient_name or "",
            fixed_frame_of_reference_uid=fixed.frame_of_reference_uid,
            moving_frame_of_reference_uid=moving.frame_of_reference_uid,
            study_uid=moving.study_uid,
        )
    except OSError as exc:
        raise UsageError(f"cannot write {args.reg_out}: {exc.strerror}") from None
    return str(args.reg_out)


def run_reg_show(argv: list[str]) -> int:
    p = ArgParser(prog="igrtctl reg show", description="Show a DICOM spatial registration.")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    return usage_exit(lambda: _reg_show(p.parse_args(argv)))


def _reg_show(args: argparse.Namespace) -> int:
    from imaging.dicom_reg import read_registration

    rec = read_registration(args.file)
    out = {
        "matrix": [[float(v) for v in row] for row in rec.matrix],
        "patient_id": rec.patient_id,
        "fixed_frame_of_reference_uid": rec.fixed_frame_of_reference_uid,
        "moving_frame_of_reference_uid": rec.moving_frame_of_reference_uid,
        "content_datetime": rec.content_datetime.isoformat() if rec.content_datetime else None,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"patient {rec.patient_id}; planning FoR {rec.fixed_frame_of_reference_uid}; "
              f"daily FoR {rec.moving_frame_of_reference_uid}")
        for row in rec.matrix:
            print("  " + " ".join(f"{v:+12.6f}" for v in row))
    return ExitCode.OK
