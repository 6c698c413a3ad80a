"""`igrtctl plan`: plan a couch correction offline from a registration file.

Exit status (docs/geometry.md, daemon/igrtctl/exits.py): 0 a plan was made
and not refused, 3 VERDICT_REFUSED (the report still explains why), 2 USAGE
(unusable input), with one line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

import numpy as np

from daemon.igrtctl.args import join_negative_values
from daemon.igrtctl.exits import ArgParser, ExitCode, UsageError, err
from safety.correction import CorrectionPlan, plan_correction
from safety.couch_model import CouchModel
from safety.geometry import PatientPosition, parse_patient_position
from safety.policy import Verdict, VerdictPolicy
from safety.pose import AXES, Pose
from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads

PROG = "igrtctl plan"
# A JSON registration is {"matrix": 4x4} and a few names: shallow and small.
REGISTRATION_MAX_DEPTH = 8
REGISTRATION_MAX_BYTES = 1 << 20

# Options whose value may start with "-" (negative numbers): argparse would
# otherwise take "-10,0,5" for an option.
_VALUE_OPTIONS = ("--iso", "--couch", "--pivot", "--axes", "--registration",
                  "--patient-position", "--couch-model")


def _numbers(text: str, n: int, what: str, unit: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != n:
        raise UsageError(f"{what} needs {n} comma-separated numbers in {unit}, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{what} needs {n} comma-separated numbers in {unit}, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{what} values must be finite numbers, got {text!r}")
    return values


def _parse_axes(text: str) -> frozenset[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UsageError("--axes needs at least one axis")
    for name in names:
        if name not in AXES:
            raise UsageError(f"--axes: unknown axis {name!r} (expected some of {', '.join(AXES)})")
    return frozenset(names)


def _build_parser() -> ArgParser:
    p = ArgParser(
        prog=PROG,
        allow_abbrev=False,
        description="Plan a couch correction from a registration (docs/geometry.md).",
    )
    p.add_argument("--registration", required=True, metavar="FILE",
                   help='DICOM REG file, or JSON {"matrix": 4x4} (ITK fixed=planning -> moving=daily)')
    p.add_argument("--iso", required=True, metavar="X,Y,Z",
                   help="planned isocentre, planning (DICOM) coordinates, mm")
    p.add_argument("--patient-position", required=True, metavar="P",
                   help=", ".join(pp.value for pp in PatientPosition))
    p.add_argument("--couch", required=True, metavar="LAT,LONG,VERT,YAW,PITCH,ROLL",
                   help="couch pose when the daily image was acquired (mm, deg)")
    p.add_argument("--axes", metavar="AXES", default=None,
                   help="enabled axes, comma-separated (default: all six)")
    p.add_argument("--pivot", metavar="X,Y,Z", default=None,
                   help="pitch/roll pivot, table-top frame, mm (default: the couch model's)")
    p.add_argument("--couch-model", metavar="FILE", default=None, help="couch model JSON")
    p.add_argument("--gantry-deg", type=float, default=0.0, metavar="DEG",
                   help="gantry angle for the collision report (IEC 61217, default 0)")
    p.add_argument("--arms", choices=("parked", "extended"), default="parked",
                   help="kV imager arms and EPID for the collision report (default parked)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    return join_negative_values(argv, _VALUE_OPTIONS)


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _read_matrix(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read registration file {path}: {exc.strerror or exc}") from None
    if _is_dicom(data):
        return _read_dicom_matrix(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"registration file {path} is neither DICOM nor UTF-8 JSON") from None
    try:
        # Strict: NaN/Infinity, duplicate keys and deep nesting are refused, not parsed.
        doc = strict_loads(data, max_depth=REGISTRATION_MAX_DEPTH, max_bytes=REGISTRATION_MAX_BYTES)
    except JsonInputError as exc:
        reason = str(exc).removeprefix("malformed JSON: ")
        raise UsageError(f"registration file {path} is not valid JSON: {reason}") from None
    if not isinstance(doc, dict) or "matrix" not in doc:
        raise UsageError(f'registration file {path} must be a JSON object with a "matrix" key')
    rows = doc["matrix"]
    if not (isinstance(rows, list) and len(rows) == 4
            and all(isinstance(r, list) and len(r) == 4 for r in rows)):
        raise UsageError(f"registration file {path}: matrix must be 4 rows of 4 numbers")
    for r in rows:
        for v in r:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UsageError(f"registration file {path}: matrix entry {v!r} is not a number")
    return np.array(rows, dtype=float)


def _read_dicom_matrix(path: str) -> np.ndarray:
    try:
        from imaging.dicom_reg import read_registration_matrix
    except ImportError as exc:
        raise UsageError(f"DICOM registration files are not supported here: {exc}") from None
    try:
        matrix = read_registration_matrix(path)
    # The DICOM reader is third-party-backed (pydicom); at this user boundary any
    # failure to read the file becomes one line rather than a traceback.
    except Exception as exc:  # noqa: BLE001
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot use DICOM registration {path}: {text}") from None
    return np.asarray(matrix, dtype=float)


def _read_couch_model(path: str) -> CouchModel:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read couch model file {path}: {exc}") from None
    try:
        return CouchModel.from_mapping(strict_loads(text, max_depth=REGISTRATION_MAX_DEPTH,
                                                    max_bytes=REGISTRATION_MAX_BYTES))
    except ValueError as exc:  # JsonInputError or the model's one-line refusal
        raise UsageError(f"{path}: {exc}") from None


def _couch_model(args: argparse.Namespace) -> CouchModel:
    model = _read_couch_model(args.couch_model) if args.couch_model else CouchModel.default()
    if args.pivot is not None:
        model = model.with_pivot(_numbers(args.pivot, 3, "--pivot", "mm"))  # type: ignore[arg-type]
    return model


def _make_plan(args: argparse.Namespace) -> CorrectionPlan:
    iso = _numbers(args.iso, 3, "--iso", "mm")
    couch = Pose.from_seq(_numbers(args.couch, 6, "--couch", "mm and deg"))
    axes = _parse_axes(args.axes) if args.axes is not None else frozenset(AXES)
    try:
        position = parse_patient_position(args.patient_position)
    except ValueError as exc:
        raise UsageError(f"--patient-position: {exc}") from None
    model = _couch_model(args)
    matrix = _read_matrix(args.registration)
    try:
        return plan_correction(matrix, iso, position, couch, model, VerdictPolicy(), axes)
    except ValueError as exc:
        raise UsageError(f"registration {args.registration}: {exc}") from None


def _n(v: float) -> str:
    # Round before formatting so rounding noise never prints as "-0.00".
    return f"{round(v, 2) + 0.0:+.2f}"


def _fmt_xyz(d: dict[str, float], unit: str) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in d.items()) + f" {unit}"


def _fmt_pose(p: Pose) -> str:
    return (
        f"lat {_n(p.lat)}  long {_n(p.long)}  vert {_n(p.vert)} mm   "
        f"yaw {_n(p.yaw)}  pitch {_n(p.pitch)}  roll {_n(p.roll)} deg"
    )


def collision_report(plan: CorrectionPlan, start: Pose, model: CouchModel, gantry_deg: float,
                     arms: str) -> str:
    """The path's minimum clearance and closest pair in the shipped room model with the
    default patient envelope (docs/collision.md): what igrtd checks at a proposal with
    the gantry and arms the PLC reports. Information only: the verdict is the plan's."""
    from safety.collision import check_path
    from safety.collision_config import CollisionConfig
    from safety.collision_model import Arms
    from safety.collision_scene import CollisionModel

    if not (math.isfinite(gantry_deg) and 0.0 <= gantry_deg < 360.0):
        raise UsageError(f"--gantry-deg {gantry_deg:g} deg is outside 0..360 deg")
    cfg = CollisionConfig()
    state = Arms.extended() if arms == "extended" else Arms.parked()
    check = check_path(start, plan.target, gantry_deg, state, cfg.patient, cfg.margin_mm,
                       model=CollisionModel.for_couch(cfg.room, model))
    head = (f"collision (gantry {gantry_deg:g} deg, arms {arms}, default patient): min "
            f"clearance {check.min_clearance_mm:.1f} mm, {check.objects[0]} and "
            f"{check.objects[1]}; margin {cfg.margin_mm:g} mm")
    return head if check.allowed else f"{head}\n  - igrtd would refuse: {check.reason}"


def human_report(plan: CorrectionPlan) -> str:
    lines = [
        f"verdict:  {plan.verdict.value}",
        f"target:   {_fmt_pose(plan.target)}",
        f"delta:    {_fmt_pose(plan.delta)}",
        f"residual rotation: {_fmt_xyz(plan.residual_rotation_deg, 'deg')}",
        f"residual isocentre error: {_fmt_xyz(plan.residual_iso_mm, 'mm')}",
    ]
    lines += [f"  - {r}" for r in plan.reasons]
    return "\n".join(lines)


def run_plan(argv: list[str]) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(_join_negative_values(argv))
        plan = _make_plan(args)
        text = (
            json.dumps(plan.to_json_dict(), allow_nan=False) if args.json else human_report(plan)
        )
        if not args.json and plan.verdict is not Verdict.REFUSED:
            text += "\n" + collision_report(
                plan, Pose.from_seq(_numbers(args.couch, 6, "--couch", "mm and deg")),
                _couch_model(args), args.gantry_deg, args.arms)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, ValueError) as exc:
        err(f"error: {exc}", PROG)
        return ExitCode.USAGE
    sys.stdout.write(text + "\n")
    return ExitCode.VERDICT_REFUSED if plan.verdict is Verdict.REFUSED else ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_plan(sys.argv[1:]))
