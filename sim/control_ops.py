"""The control operations of a simulated room: one table, each operation declared once.

    result = await run_op(room, "inject", {"fault": "couch_fault", "code": "internal"})

`run_op` is the single entry: the control socket (sim/control_server.py)
and the scenario runner (in-process) both call it, and the protocol document
(docs/sim-control-api.md) is generated from `OPS`. Arguments are validated
strictly (sim/validation.py): NaN, Infinity, out-of-range values, unknown
keys are refused with one line naming value, limit and unit (`OpError`).
Times in results are `time.monotonic()` (CLOCK_MONOTONIC, the same clock in
every process on the machine) and wall-clock `time.time()`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, StrictFloat, TypeAdapter, ValidationError, model_validator

from drivers.plc import StatusRegister
from safety.pose import Pose
from sim.control_faults import Fault, FaultError, clear_all, inject
from sim.plc_gantry import MAX_SPEED_DEG_S, TYPICAL_SPEED_DEG_S, SimGantry
from sim.room_description import Breathing, SetupError
from sim.room_imperfections import MAX_LOAD_KG, RealCouch, pose_error
from sim.validation import Strict, one_line

if TYPE_CHECKING:
    from sim.room_handle import RoomHandle

_Drift = Annotated[StrictFloat, Field(ge=-5.0, le=5.0, allow_inf_nan=False)]
_Centre = Annotated[StrictFloat, Field(ge=-200.0, le=200.0, allow_inf_nan=False)]
# Along the table (room y) the cube is slid up to 700 mm toward the foot, so that a couch
# extended by as much brings it to the isocentre (`igrtctl qa couch-sag`).
_CentreLong = Annotated[StrictFloat, Field(ge=-700.0, le=200.0, allow_inf_nan=False)]
IMAGE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
GANTRY_NOTE = ("the room PLC's gantry angle input: register 9 in 0.01 deg, read by igrtd "
               "as PlcSnapshot.gantry_deg")
GANTRY_NOTE_NO_PLC = "this room has no PLC (plc: false): igrtd does not see the gantry"


class OpError(ValueError):
    """A refused operation; str() is one line for the client."""


class NoArgs(Strict):
    pass


class PatientArgs(Strict):
    setup_error: SetupError | None = Field(
        default=None, description="re-place the patient: this error relative to the couch now")
    drift_mm_s: tuple[_Drift, _Drift, _Drift] | None = Field(
        default=None, strict=False, description="room x, y, z; continues from where the patient is")
    breathing: Breathing | None = Field(default=None, description="amplitude_mm peak to peak "
                                        "(0..30), period_s (1..20), along room Y")

    @model_validator(mode="after")
    def _something(self) -> PatientArgs:
        if self.setup_error is None and self.drift_mm_s is None and self.breathing is None:
            raise ValueError("give setup_error, drift_mm_s or breathing")
        return self


class GantryArgs(Strict):
    angle_deg: float = Field(ge=0.0, lt=360.0, description="IEC 61217 gantry angle")
    speed_deg_s: float | None = Field(
        default=None, gt=0.0, le=MAX_SPEED_DEG_S, description="turn there at this "
        f"speed (a linac turns its gantry at about {TYPICAL_SPEED_DEG_S:g} deg/s), "
        "the numeric way, never through 0/360; null: at once")


class PendantArgs(Strict):
    pressed: bool = Field(description="true: held (motion possible); false: let go")


class RecordArgs(Strict):
    device: Literal["couch", "plc"] = Field(description="whose record")
    since: float = Field(default=0.0, ge=0.0, description="time.monotonic() s; 0: everything")


class AcquireArgs(Strict):
    path: str = Field(min_length=1, max_length=4096, description=(
        "image file (.mha .mhd .nii .nii.gz .nrrd); relative paths go to RUN_DIR/images/"))
    subject: Literal["patient", "qa_phantom"] = Field(
        default="patient", description="what lies on the couch: the patient, or the daily QA "
        "cube phantom (sim/qa_phantom.py)")


class CouchLoadArgs(Strict):
    kg: float = Field(ge=0.0, le=MAX_LOAD_KG, description="load on the table top (couch sag "
                      "grows with it; no effect in a room without imperfections)")


class QaPlaceArgs(Strict):
    centre_mm: tuple[_Centre, _CentreLong, _Centre] = Field(
        default=(0.0, 0.0, 0.0), strict=False, description="room x, y, z where the cube's "
        "centre is laid, with the couch where it really is now (0: the treatment isocentre)")


@dataclass(frozen=True)
class Op:
    name: str
    args: Any  # a pydantic model or annotated union, validated with a TypeAdapter
    help: str
    run: Callable[[RoomHandle, Any], dict[str, Any] | Awaitable[dict[str, Any]]]

    @property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.args)


# ------------------------------------------------------------------ the real couch
def real_couch(room: RoomHandle) -> RealCouch:
    """The room's couch as it really is (imperfections, load, moves); one per room."""
    rc = room.cache.get("real_couch")
    if rc is None:
        rc = room.cache["real_couch"] = RealCouch(room.description.imperfections,
                                                  room.description.seed)
    assert isinstance(rc, RealCouch)
    return rc


def true_couch_pose(room: RoomHandle) -> Pose | None:
    """The real table-top pose now (the controller's own pose in a perfect room)."""
    couch = room.couch
    if couch is None:
        return None
    return real_couch(room).pose(couch.pose, RealCouch.moves(couch.executed_commands))


def room_gantry(room: RoomHandle) -> SimGantry:
    """The room's gantry: the PLC's (whose register 9 carries its angle), or in a room
    without a PLC one of the simulated world only."""
    if room.plc is not None:
        return room.plc.gantry
    gantry = room.cache.get("gantry")
    if gantry is None:
        gantry = room.cache["gantry"] = SimGantry()
    assert isinstance(gantry, SimGantry)
    return gantry


def _gantry_truth(room: RoomHandle) -> dict[str, Any]:
    out: dict[str, Any] = dict(room_gantry(room).as_dict())
    if room.plc is None:
        out["note"] = GANTRY_NOTE_NO_PLC
    else:
        # What the wire carries now (a raw value forced by inject plc_raw_register wins).
        out["register"] = room.plc.status_block()[StatusRegister.GANTRY_ANGLE]
        out["note"] = GANTRY_NOTE
    return out


def _qa_placement(room: RoomHandle) -> tuple[Any, tuple[float, float, float]]:
    """(placement A, centre_room) of the QA cube: laid at the treatment isocentre with
    the couch at the description's start pose (its real pose before any move, at the
    description's load) unless op qa_phantom_place laid it since."""
    if "qa_placement" not in room.cache:
        from sim.qa_phantom import lay_phantom

        d = room.description
        start = d.couch.start_pose.pose()
        imp = d.imperfections
        real = start if imp is None else imp.true_pose(start, imp.load_kg,
                                                       real_couch(room).rng(0))
        room.cache["qa_placement"] = (lay_phantom(real, pivot=room.patient.world.pivot),
                                      (0.0, 0.0, 0.0))
    placement, centre = room.cache["qa_placement"]
    return placement, centre


def _qa_truth(room: RoomHandle, real: Pose) -> dict[str, Any]:
    from sim.qa_phantom import bb_room_mm, room_point

    placement, centre = _qa_placement(room)
    pivot = room.patient.world.pivot
    return {"bb_offset_mm": list(room.description.qa_phantom.bb_offset_mm),
            "laid_at_mm": list(centre),
            "centre_room_mm": list(room_point(placement, real, (0.0, 0.0, 0.0), pivot)),
            "bb_true_room_mm": list(bb_room_mm(placement, real, room.description.qa_phantom,
                                               pivot))}


# ------------------------------------------------------------------ operations
def _describe(room: RoomHandle, _: NoArgs) -> dict[str, Any]:
    return {"room": room.description.model_dump(mode="json"), "info": room.info(),
            "ops": [{"name": op.name, "help": op.help} for op in OPS.values()]}


def _truth(room: RoomHandle, _: NoArgs) -> dict[str, Any]:
    couch = room.couch
    plc = room.plc
    pose = couch.pose if couch is not None else None
    real = true_couch_pose(room)
    rc = real_couch(room)
    return {
        "t_monotonic": time.monotonic(), "t_wall": time.time(),
        "couch": None if couch is None or pose is None or real is None else {
            "pose": pose.as_dict(), "state": couch.state, "fault_code": couch.fault_code,
            "moving": couch.is_moving, "true_pose": real.as_dict(),
            "true_minus_reported": pose_error(real, pose),
            "moves": RealCouch.moves(couch.executed_commands)},
        **rc.as_dict(),
        "qa_phantom": None if real is None else _qa_truth(room, real),
        "plc": None if plc is None else {
            "inputs": plc.inputs(), "coils": plc.coils(), "fault_code": plc.fault_code,
            "heartbeat": plc.heartbeat, "openings": dict(plc.openings)},
        "patient": None if real is None else room.patient.truth(real),
        "gantry": _gantry_truth(room),
        "kv_imager": None if room.kv is None else {
            "connected": room.kv.connected, "acquiring": room.kv.acquiring,
            "frames_sent": len(room.kv.sent)},
    }


async def _inject(room: RoomHandle, fault: Any) -> dict[str, Any]:
    return await inject(room, fault)


async def _clear(room: RoomHandle, _: NoArgs) -> dict[str, Any]:
    return await clear_all(room)


def _patient(room: RoomHandle, a: PatientArgs) -> dict[str, Any]:
    if a.setup_error is not None:
        real = true_couch_pose(room)
        if real is None:
            raise OpError("the couch controller is not running")
        room.patient.place(real, a.setup_error.pose())
    if a.drift_mm_s is not None:
        room.patient.set_drift(a.drift_mm_s)
    if a.breathing is not None:
        room.patient.set_breathing(a.breathing.amplitude_mm, a.breathing.period_s)
    real = true_couch_pose(room)
    return {"patient": room.patient.truth(real) if real is not None else None}


def _gantry(room: RoomHandle, a: GantryArgs) -> dict[str, Any]:
    gantry = room_gantry(room)
    if a.speed_deg_s is None:
        gantry.set_angle(a.angle_deg)
        seconds = 0.0
    else:
        seconds = gantry.rotate_to(a.angle_deg, a.speed_deg_s)
    return {"gantry": _gantry_truth(room), "seconds": round(seconds, 3),
            "t_monotonic": time.monotonic()}


def _pendant(room: RoomHandle, a: PendantArgs) -> dict[str, Any]:
    if room.plc is None:
        raise OpError("this room has no PLC, so no motion-enable pendant (plc: false)")
    room.plc.set_input("motion_enable_pressed", a.pressed)
    return {"motion_enable_pressed": a.pressed}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _record(room: RoomHandle, a: RecordArgs) -> dict[str, Any]:
    now = time.monotonic()
    wall = time.time() - now  # monotonic -> wall clock, at this moment

    def stamp(t: float) -> dict[str, float]:
        return {"t_monotonic": t, "t_wall": t + wall}

    if a.device == "couch":
        if room.couch is None:
            raise OpError("the couch controller is not running")
        c = room.couch
        return {"device": "couch", "now_monotonic": now,
                "commands": [{"kind": e.kind, "args": _jsonable(e.details), **stamp(e.t)}
                             for e in c.executed_commands if e.t >= a.since],
                "refused": [{"kind": r.kind, "reason": r.reason, **stamp(r.t)}
                            for r in c.refused_commands if r.t >= a.since]}
    if room.plc is None:
        raise OpError("this room has no PLC (plc: false in its description)")
    p = room.plc
    return {"device": "plc", "now_monotonic": now,
            "coil_writes": [{"name": n, "value": v, **stamp(t)}
                            for t, n, v in p.coil_changes if t >= a.since],
            "input_changes": [{"name": n, "value": v, **stamp(t)}
                              for t, n, v in p.input_changes if t >= a.since]}


def _image_path(room: RoomHandle, text: str) -> Path:
    path = Path(text)
    if ".." in path.parts:
        raise OpError(f"path {text!r}: '..' is not allowed")
    if not text.endswith(IMAGE_SUFFIXES):
        raise OpError(f"path {text!r}: give one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.is_absolute():
        path = room.run_dir / "images" / path
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.is_dir():
        raise OpError(f"path {text!r}: directory {path.parent} does not exist")
    if path.exists():
        raise OpError(f"path {text!r}: {path} exists; the simulator never overwrites a file")
    return path


def _imaging(room: RoomHandle) -> tuple[Any, Path]:
    """Phantom and planning CT, built once per room (seconds of work)."""
    if "phantom" not in room.cache:
        import numpy as np
        import SimpleITK as sitk

        from sim.imager import planning_ct
        from sim.phantom import make_phantom

        phantom = make_phantom(room.description.seed)
        rng = np.random.default_rng(room.description.seed)
        plan = room.run_dir / "images" / "planning_ct.mha"
        plan.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(planning_ct(phantom, rng=rng), str(plan))
        room.cache["phantom"], room.cache["plan"] = phantom, plan
    return room.cache["phantom"], room.cache["plan"]


async def _acquire_cbct(room: RoomHandle, a: AcquireArgs) -> dict[str, Any]:
    if room.couch is None:
        raise OpError("the couch controller is not running")
    path = _image_path(room, a.path)
    # Read on the room's loop at acquisition: the pose the controller reports (what
    # igrtd sees) and where the table top really is (imperfections applied).
    pose = room.couch.pose
    real = true_couch_pose(room)
    assert real is not None
    imp = room.description.imperfections
    shot = real if imp is None else imp.imaging_pose(real)  # about the imaging isocentre
    world = room.patient.world
    t0 = time.monotonic()
    common = {"subject": a.subject, "couch_pose": pose.as_dict(), "true_pose": real.as_dict(),
              "imaging_iso_offset_mm": [0.0, 0.0, 0.0] if imp is None
              else list(imp.imaging_iso_offset_mm)}
    if a.subject == "qa_phantom":
        return await _acquire_qa_cbct(room, path, real, shot, t0, common)

    def work() -> Path:
        import numpy as np
        import SimpleITK as sitk

        from sim.imager import acquire_cbct

        phantom, plan = _imaging(room)
        rng = np.random.default_rng([room.description.seed, int(t0 * 1000)])
        cbct = acquire_cbct(phantom, world.placement, shot, world.pivot, world.iso,
                            world.patient_position, rng)
        sitk.WriteImage(cbct, str(path))
        return plan

    plan = await asyncio.to_thread(work)
    return {"path": str(path), "planning_ct": str(plan), **common,
            "iso_mm": list(world.iso), "patient_position": world.patient_position,
            "acquired_monotonic": t0, "seconds": round(time.monotonic() - t0, 3)}


async def _acquire_qa_cbct(room: RoomHandle, path: Path, real: Pose, shot: Pose, t0: float,
                           common: dict[str, Any]) -> dict[str, Any]:
    from sim.qa_phantom import (
        QA_ISO_MM,
        QA_PATIENT_POSITION,
        image_point,
        make_qa_phantom,
        table_top_for,
    )

    spec = room.description.qa_phantom
    placement, _ = _qa_placement(room)
    pivot = room.patient.world.pivot
    truth = _qa_truth(room, real)
    imp = room.description.imperfections
    seen = truth["bb_true_room_mm"] if imp is None else imp.imaging_shift(
        truth["bb_true_room_mm"])

    def work() -> None:
        import numpy as np
        import SimpleITK as sitk

        from sim.imager import acquire_cbct

        if "qa_phantom" not in room.cache:
            room.cache["qa_phantom"] = make_qa_phantom(spec)
        rng = np.random.default_rng([room.description.seed, int(t0 * 1000)])
        cbct = acquire_cbct(room.cache["qa_phantom"], placement, shot, pivot, QA_ISO_MM,
                            QA_PATIENT_POSITION, rng, table_top=table_top_for(placement))
        sitk.WriteImage(cbct, str(path))

    await asyncio.to_thread(work)
    return {"path": str(path), "planning_ct": None, **common,
            "iso_mm": list(QA_ISO_MM), "patient_position": QA_PATIENT_POSITION,
            "bb_offset_mm": truth["bb_offset_mm"],
            "bb_true_room_mm": truth["bb_true_room_mm"],
            "bb_image_mm": list(image_point(seen)),
            "acquired_monotonic": t0, "seconds": round(time.monotonic() - t0, 3)}


def _couch_load(room: RoomHandle, a: CouchLoadArgs) -> dict[str, Any]:
    rc = real_couch(room)
    rc.load_kg = a.kg
    real = true_couch_pose(room)
    out: dict[str, Any] = {"couch_load_kg": a.kg,
                           "true_pose": None if real is None else real.as_dict()}
    if rc.imperfections is None:
        out["note"] = "this room has no imperfections: the load changes nothing"
    return out


def _qa_phantom_place(room: RoomHandle, a: QaPlaceArgs) -> dict[str, Any]:
    from sim.qa_phantom import lay_phantom

    real = true_couch_pose(room)
    if real is None:
        raise OpError("the couch controller is not running")
    centre = (float(a.centre_mm[0]), float(a.centre_mm[1]), float(a.centre_mm[2]))
    room.cache["qa_placement"] = (lay_phantom(real, centre, room.patient.world.pivot), centre)
    return {"qa_phantom": _qa_truth(room, real), "true_pose": real.as_dict()}


OPS: dict[str, Op] = {op.name: op for op in (
    Op("describe", NoArgs, "the room description, connection info and this table", _describe),
    Op("truth", NoArgs, "ground truth: couch pose/state/fault and real pose, imperfections "
       "and load, QA phantom, PLC inputs/coils, patient, gantry, kV imager", _truth),
    Op("inject", Fault, "inject one fault into a real simulated device (the `fault` key "
       "picks which)", _inject),
    Op("clear", NoArgs, "undo every injection (a couch FAULT stays until igrtd resets it)",
       _clear),
    Op("patient", PatientArgs, "set the patient's set-up error, drift and/or breathing",
       _patient),
    Op("gantry", GantryArgs, "put the gantry at an angle now, or turn it there at a speed "
       "(the room PLC's gantry angle input, register 9)", _gantry),
    Op("pendant", PendantArgs, "press or release the hold-to-run motion-enable pendant "
       "(PLC input)", _pendant),
    Op("record", RecordArgs, "device-side record: commands that reached the couch, or PLC "
       "coil writes and input changes", _record),
    Op("acquire_cbct", AcquireArgs, "write a CBCT of the patient (and the planning CT) or of "
       "the QA phantom, through the couch's real pose and about the imaging isocentre",
       _acquire_cbct),
    Op("couch_load", CouchLoadArgs, "set the load on the table top (couch sag grows with it)",
       _couch_load),
    Op("qa_phantom_place", QaPlaceArgs, "lay the QA phantom on the table with its centre at a "
       "room point, the couch as it is now", _qa_phantom_place),
)}


async def run_op(room: RoomHandle, name: str, args: Mapping[str, object]) -> dict[str, Any]:
    """Run one operation on the room's loop; OpError (one line) if it is refused."""
    op = OPS.get(name)
    if op is None:
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise OpError(f"unknown op {shown!r}; known: {', '.join(OPS)}")
    if not isinstance(args, Mapping):
        raise OpError(f"{name}: args must be a JSON object")
    try:
        parsed = op.adapter.validate_python(dict(args))
    except ValidationError as exc:
        raise OpError(one_line(exc, f"{name}: ")) from None
    try:
        result = op.run(room, parsed)
        if inspect.isawaitable(result):
            result = await result
    except (FaultError, ValueError, RuntimeError) as exc:
        raise OpError(f"{name}: {' '.join(str(exc).split())}") from None
    return result
