"""`igrtctl register2d` and `igrtctl register4d`: offline 2D/3D and 4D registration.

    igrtctl register2d --plan CT --kv A.mha --kv B.mha [--iso X,Y,Z]
                       [--patient-position HFS] [--overlay PNG] [--json]
    igrtctl register4d --plan CT --phase P0.mha ... [--iso X,Y,Z]
                       [--use mean|N] [--initial REG.json] [--plot PNG] [--json]

CT: any image SimpleITK reads or a DICOM series directory. kV images: 2D
images carrying their geometry as IGRT_SAD / IGRT_SID / IGRT_ANGLE_DEG
metadata (docs/imaging-2d-4d.md). --iso defaults to the centre of the
planning CT. Exit status (daemon/igrtctl/exits.py): 0 registered, 3
VERDICT_REFUSED (the JSON says why), 2 USAGE (unusable input; one line on
stderr, no traceback).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.igrtctl.args import join_negative_values, triple
from daemon.igrtctl.exits import ArgParser, ExitCode, UsageError, err, usage_exit
from daemon.igrtctl.register import quiet_itk
from daemon.jsontypes import JsonObject

if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk

_VALUE_OPTIONS = ("--iso",)


def _iso(text: str) -> tuple[float, float, float]:
    return triple(text, "--iso")


def _read_plan(path: str) -> sitk.Image:
    from imaging.volumes import read_image

    return read_image(path).image


def _read_2d(path: str, what: str) -> sitk.Image:
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path}: no such file")
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[-1]
        raise UsageError(f"{what} {path}: cannot read image ({first.strip()})") from None


def _plan_centre(img: sitk.Image) -> tuple[float, float, float]:
    c = [(s - 1) / 2.0 for s in img.GetSize()]
    return tuple(float(v) for v in img.TransformContinuousIndexToPhysicalPoint(c))  # type: ignore[return-value]


def _main(argv: list[str], body: Callable[[list[str]], int]) -> int:
    try:
        return int(usage_exit(lambda: body(join_negative_values(list(argv), _VALUE_OPTIONS))))
    except OSError as exc:  # an unreadable image or unwritable output: one line, no traceback
        err(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return ExitCode.USAGE


def _parser(prog: str, description: str, images: str, images_help: str,
            iso_help: str) -> ArgParser:
    """The options both tools start with: the planning CT, the images (repeated), --iso."""
    p = ArgParser(prog=prog, description=description)
    p.add_argument("--plan", required=True, help="planning CT (file or DICOM series dir)")
    p.add_argument(images, action="append", required=True, help=images_help)
    p.add_argument("--iso", help=iso_help)
    return p


# ------------------------------------------------------------------ register2d
def run_register2d(argv: list[str]) -> int:
    return _main(argv, _register2d)


def _register2d(argv: list[str]) -> int:
    p = _parser("igrtctl register2d",
                "Register a pair of kV radiographs to the planning CT (6 DoF).",
                "--kv", "kV image (.mha), twice or more",
                "planned isocentre X,Y,Z mm (default: planning CT centre)")
    p.add_argument("--patient-position", default="HFS", help="HFS, HFP, FFS, ... (default HFS)")
    p.add_argument("--overlay", help="write a DRR-versus-kV review PNG here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if len(args.kv) < 2:
        raise UsageError(f"need at least 2 --kv images, got {len(args.kv)}")
    from safety.geometry import parse_patient_position

    pos = parse_patient_position(args.patient_position).value
    quiet_itk()
    from imaging.registration2d3d import KvView, register_2d3d

    views = []
    for path in args.kv:
        img = _read_2d(path, "kV image")
        try:
            views.append(KvView.from_sitk(img, f"kV image {path}"))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    plan = _read_plan(args.plan)
    iso = _iso(args.iso) if args.iso else _plan_centre(plan)
    result = register_2d3d(plan, views, iso, pos)
    out: JsonObject = result.to_json_dict()
    out["iso_mm"] = list(iso)
    out["views_deg"] = [v.geometry.angle_deg for v in views]
    if args.overlay:
        from imaging.plots import kv_overlay_png

        kv_overlay_png(plan, views, result.matrix, iso, pos, args.overlay)
        out["overlay"] = str(args.overlay)
    if args.json:
        print(json.dumps(out))
    else:
        print(result.summary("NCC", 3))
    if not result.converged:
        err(f"registration refused: {result.reason}")
        return ExitCode.VERDICT_REFUSED
    return ExitCode.OK


# ------------------------------------------------------------------ register4d
def run_register4d(argv: list[str]) -> int:
    return _main(argv, _register4d)


def _register4d(argv: list[str]) -> int:
    p = _parser("igrtctl register4d",
                "Target trajectory and mean position from 4D CBCT phase volumes.",
                "--phase", "phase volume, one per phase",
                "target X,Y,Z mm in planning coordinates (default: CT centre)")
    p.add_argument("--use", default="mean", help="correction at the 'mean' position or phase N")
    p.add_argument("--initial", help="JSON {'matrix': 4x4} bony registration to start from")
    p.add_argument("--plot", help="write the phase trajectory PNG here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    use: str | int = args.use
    if use != "mean":
        try:
            use = int(args.use)
        except ValueError:
            raise UsageError(f"--use must be 'mean' or a phase number, got {args.use!r}") from None
    initial = _read_matrix(args.initial) if args.initial else None
    quiet_itk()
    from imaging.fourd import correction_matrix, register_4d
    from imaging.volumes import read_image

    plan = _read_plan(args.plan)
    phases = [read_image(path).image for path in args.phase]
    iso = _iso(args.iso) if args.iso else _plan_centre(plan)
    result = register_4d(plan, phases, iso, initial=initial)
    matrix = correction_matrix(result, use)
    out = result.to_json_dict()
    out["use"] = use
    out["matrix"] = [[float(v) for v in row] for row in matrix]
    if args.plot:
        from imaging.plots import trajectory_png

        trajectory_png(result, args.plot)
        out["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(out))
    else:
        m, a = result.mean_position_mm, result.amplitude_mm
        print(f"mean target position: {m[0]:+.2f} {m[1]:+.2f} {m[2]:+.2f} mm; amplitude "
              f"{a[0]:.2f} {a[1]:.2f} {a[2]:.2f} mm (principal "
              f"{result.principal_amplitude_mm:.2f} mm); {len(result.phases)} phases; "
              f"{result.seconds:.2f} s; {'ok' if result.converged else 'REFUSED: ' + result.reason}")
    if not result.converged:
        err(f"4D registration refused: {result.reason}")
        return ExitCode.VERDICT_REFUSED
    return ExitCode.OK


def _read_matrix(path: str) -> np.ndarray:
    import numpy as np

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    try:
        m = np.array(data["matrix"], dtype=float)
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{path}: expected a JSON object with a 4x4 'matrix'") from None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise UsageError(f"{path}: 'matrix' must be 4x4 finite numbers")
    return m
