"""The registration file of `igrtctl propose`: read it, and build the propose arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.igrtctl.args import triple
from daemon.igrtctl.exits import UsageError
from daemon.jsontypes import JsonObject, as_object


def registration_input(path: Path) -> JsonObject:
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
        out: JsonObject = {"matrix": [list(map(float, r)) for r in rec.matrix],
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
    return as_object(data)  # JSON object keys are strings: cannot fail here


def propose_args(a: argparse.Namespace) -> JsonObject:
    reg = registration_input(a.registration)
    binding: JsonObject = {
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
    args: JsonObject = {
        "matrix": reg["matrix"],
        "iso": list(triple(a.iso, "--iso")),  # sent as a JSON array, as the tuple was
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
            couch: JsonObject = dict(zip(AXES, map(float, vals)))
            args["couch_at_imaging"] = couch
        except ValueError:
            raise UsageError(f"--couch-at-imaging: not numbers: {a.couch_at_imaging!r}") from None
    return args
