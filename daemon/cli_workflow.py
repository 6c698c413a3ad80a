"""The clinical workflow subcommands and their rendering, shared by igrtctl's two
front ends: the local control socket (daemon/cli.py) and MQTT (daemon/console_cmd.py).

Both import this module; neither imports the other's private names, so there is
no import cycle between them (tests/test_import_cycles.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from daemon.cli_args import parse_xyz

HOLD_RATE_HZ = 20.0


class UsageError(Exception):
    pass


def triple(text: str, what: str) -> tuple[float, float, float]:
    try:
        return parse_xyz(text, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def registration_input(path: Path) -> dict[str, Any]:
    """Matrix and whatever identity the file carries (DICOM REG or JSON)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise UsageError(f"cannot read registration {path}: {exc.strerror}") from None
    if len(head) == 132 and head[128:132] == b"DICM":
        from imaging.dicom_reg import read_registration

        try:
            rec = read_registration(path)
        except ValueError as exc:  # one line naming the file (imaging.dicom_safe)
            raise UsageError(str(exc)) from None
        out: dict[str, Any] = {"matrix": [list(map(float, r)) for r in rec.matrix],
                               "patient_id": rec.patient_id,
                               "frame_of_reference_uid": rec.fixed_frame_of_reference_uid}
        acquired = getattr(rec, "acquired_at", None)
        if acquired:
            out["acquired_at"] = acquired
        return out
    from safety.strict_json import loads as strict_loads

    try:
        # A registration is a 4x4 matrix and a few names: shallow and small.
        data = strict_loads(path.read_bytes(), max_depth=8, max_bytes=1 << 20)
    except OSError as exc:
        raise UsageError(f"cannot read registration {path}: {exc.strerror}") from None
    except ValueError as exc:  # JsonInputError: NaN, duplicate keys, depth, not UTF-8
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "matrix" not in data:
        raise UsageError(f"{path}: expected a JSON object with a 'matrix' (4x4)")
    return data


def print_result(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        _print_human(obj)


def _print_human(obj: Any, indent: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                print(f"{indent}{k}:")
                _print_human(v, indent + "  ")
            elif isinstance(v, float):
                print(f"{indent}{k}: {v:.3f}")
            else:
                print(f"{indent}{k}: {v}")
    else:
        print(f"{indent}{obj}")


def progress_line(p: dict[str, Any]) -> str:
    rem = p.get("remaining") or {}
    t = math.sqrt(sum(rem.get(a, 0.0) ** 2 for a in ("lat", "long", "vert")))
    r = max((abs(rem.get(a, 0.0)) for a in ("yaw", "pitch", "roll")), default=0.0)
    return f"{p.get('state', '?'):<10} remaining {t:6.2f} mm, {r:5.2f} deg"


def add_workflow_commands(sub: Any, *, stop_reason: str) -> None:
    """The clinical workflow subcommands, the same on the local socket and over MQTT."""
    sub.add_parser("status")
    sub.add_parser("interlocks")
    s = sub.add_parser("session")
    s_sub = s.add_subparsers(dest="action", required=True)
    so = s_sub.add_parser("open")
    so.add_argument("--patient", required=True)
    so.add_argument("--plan", required=True)
    so.add_argument("--frame-of-reference", required=True)
    so.add_argument("--iso", required=True)
    so.add_argument("--patient-position", required=True)
    s_sub.add_parser("close")
    im = sub.add_parser("imaging", help="record that an image is acquired now (couch pose)")
    im.add_argument("imaging_session")
    im.add_argument("--modality", default="CBCT")
    pr = sub.add_parser("propose")
    pr.add_argument("registration", type=Path)
    pr.add_argument("--iso", required=True)
    pr.add_argument("--patient-position", required=True)
    pr.add_argument("--patient")
    pr.add_argument("--plan")
    pr.add_argument("--frame-of-reference")
    pr.add_argument("--imaging-session")
    pr.add_argument("--acquired-at", type=float)
    pr.add_argument("--axes")
    pr.add_argument("--couch-at-imaging", help="LAT,LONG,VERT,YAW,PITCH,ROLL (default: recorded)")
    c = sub.add_parser("confirm")
    c.add_argument("proposal_id")
    c.add_argument("--no-hold", action="store_true", help="confirm only; hold later")
    a = sub.add_parser("approve")
    a.add_argument("proposal_id")
    h = sub.add_parser("hold")
    h.add_argument("proposal_id")
    h.add_argument("--rate", type=float, default=HOLD_RATE_HZ, help="heartbeats per second (>= 10)")
    st = sub.add_parser("stop")
    st.add_argument("--reason", default=stop_reason)
    sub.add_parser("release")


def propose_args(a: argparse.Namespace) -> dict[str, Any]:
    reg = registration_input(a.registration)
    binding = {
        "patient_id": a.patient or reg.get("patient_id"),
        "plan_uid": a.plan or reg.get("plan_uid"),
        "frame_of_reference_uid": a.frame_of_reference or reg.get("frame_of_reference_uid"),
        "imaging_session_uid": a.imaging_session or reg.get("imaging_session_uid"),
        "acquired_at": a.acquired_at if a.acquired_at is not None else reg.get("acquired_at"),
    }
    flags = {"patient_id": "--patient", "plan_uid": "--plan",
             "frame_of_reference_uid": "--frame-of-reference",
             "imaging_session_uid": "--imaging-session", "acquired_at": "--acquired-at"}
    missing = [flags[k] for k, v in binding.items() if v is None]
    if missing:
        raise UsageError(f"registration does not name {', '.join(missing)}; give them as options")
    args: dict[str, Any] = {
        "matrix": reg["matrix"],
        "iso": triple(a.iso, "--iso"),
        "patient_position": a.patient_position,
        "binding": binding,
        "source": str(a.registration),
    }
    if a.axes:
        args["axes"] = [x.strip() for x in a.axes.split(",") if x.strip()]
    if a.couch_at_imaging:
        from safety.pose import AXES

        vals = a.couch_at_imaging.split(",")
        if len(vals) != 6:
            raise UsageError("--couch-at-imaging needs 6 values LAT,LONG,VERT,YAW,PITCH,ROLL")
        try:
            args["couch_at_imaging"] = dict(zip(AXES, map(float, vals)))
        except ValueError:
            raise UsageError(f"--couch-at-imaging: not numbers: {a.couch_at_imaging!r}") from None
    return args
