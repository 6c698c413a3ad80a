"""The daemon's command surface, shared by every front end.

The local socket API (`igrtctl` on the treatment-room machine) and the MQTT
console API call exactly these methods on a `RoomCommands` implementation, so
role checks, state checks and auditing happen in one place whichever way a
command arrived. Front ends authenticate; RoomCommands authorises. Which
commands exist, their argument models, the roles that may send them and how
each maps onto a RoomCommands method are declared once, in daemon/commands.py.

Every request model refuses unknown fields and NaN/Infinity
(`allow_inf_nan=False`): a non-finite number passes every comparison it
meets (limits, ages, tolerances), so it must never get past the boundary,
whichever front end it came through.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Protocol, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from daemon.errors import ErrorCode
from daemon.jsontypes import JsonObject
from safety.collision_config import PatientEnvelope


class Role(StrEnum):
    THERAPIST = "therapist"
    APPROVER = "approver"  # physicist: second approval of large corrections
    SERVICE = "service"
    VIEWER = "viewer"


class Actor(BaseModel):
    """Who issued a command, as established by the front end that received it."""

    model_config = ConfigDict(frozen=True)
    user: str
    role: Role
    via: str = "local"  # "local" socket or "mqtt:<console>"


class Binding(BaseModel):
    """What a registration is bound to (R-BIND)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    patient_id: str
    plan_uid: str
    frame_of_reference_uid: str
    imaging_session_uid: str
    acquired_at: float = Field(description="UNIX time the daily image was acquired")


class ProposeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    matrix: list[list[float]] = Field(description="4x4 ITK fixed->moving rigid transform")
    iso: tuple[float, float, float]
    patient_position: str
    binding: Binding
    couch_at_imaging: dict[str, float] | None = Field(
        default=None,
        description="couch pose when the image was acquired; None: read it from the couch now",
    )
    axes: list[str] | None = None
    source: str = "registration"


class SessionRequest(BaseModel):
    """The treatment session the room is set up for.

    The isocentre, patient position and frame of reference come from the plan
    igrt holds (docs/dicom.md, plan-driven sessions); given here as well, they
    must agree with it. Typed values are used instead of the plan only under
    `manual_override`, whose reason is audited.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    patient_id: str = Field(min_length=1, max_length=64)
    plan_uid: str = Field(min_length=1, max_length=64, description="RT Plan SOP Instance UID")
    beam: str | None = Field(default=None, min_length=1, max_length=64,
                             description="beam (number or name) whose isocentre the session "
                             "sets up, when the plan has several")
    frame_of_reference_uid: str | None = Field(default=None, min_length=1, max_length=64)
    iso: tuple[float, float, float] | None = Field(default=None, description="mm, planning frame")
    patient_position: str | None = None
    manual_override: str | None = Field(
        default=None, min_length=8, max_length=256,
        description="why typed values are used instead of the stored plan (audited)")
    patient_envelope: PatientEnvelope | None = Field(
        default=None, description="the patient's envelope on the table top for the collision "
        "model (body box or cylinder, arms up or down; docs/collision.md); default: the "
        "room's `collision.patient`")


class ImagingRequest(BaseModel):
    """An image was (or is being) acquired: the daemon records the couch pose now."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    imaging_session_uid: str = Field(min_length=1, max_length=64)
    modality: str = "CBCT"


class RegisterRequest(BaseModel):
    """Register a daily image to the planning image (run by igrtd in its worker process)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    fixed: str | None = Field(default=None, min_length=1, max_length=4096,
                              description="planning CT (file or DICOM dir); default: the "
                              "planning CT of the session's stored plan")
    moving: str = Field(min_length=1, max_length=4096, description="daily image (file or DICOM dir)")
    iso: tuple[float, float, float] | None = None


class JogRequest(BaseModel):
    """One hold-to-run jog step in service mode; the console repeats it while held."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    axis: Literal["lat", "long", "vert", "yaw", "pitch", "roll"]
    velocity: float = Field(description="mm/s or deg/s, signed")
    duration_ms: int = Field(default=200, gt=0, le=500)


class MonitorStartRequest(BaseModel):
    """Beam on with intrafraction monitoring: where the markers and the target are planned.

    Positions are in the room frame (IEC 61217 X, Y, Z, mm, isocentre at the
    origin) with the patient in the verified treatment position. The optional
    overrides may only tighten the site policy (smaller tolerance, shorter
    debounce, longer release delay)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    markers_mm: list[tuple[float, float, float]] = Field(min_length=1, max_length=10)
    target_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tolerance_mm: float | None = None
    debounce_s: float | None = None
    release_after_s: float | None = None


class MonitorStopRequest(BaseModel):
    """Beam off: end monitoring. The beam-hold output is left as it is unless
    `release_hold` (the therapist's audited decision)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    release_hold: bool = False
    include_records: bool = Field(
        default=False, description="include every processed frame and hold event in the reply")


class ArmsRequest(BaseModel):
    """Drive the kV source and detector arms out to imaging position or back to park."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    extend: bool


class QaPose(BaseModel):
    """An absolute couch pose (mm, deg), every axis given."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    lat: float = Field(ge=-2000.0, le=2000.0, description="mm")
    long: float = Field(ge=-2000.0, le=2000.0, description="mm")
    vert: float = Field(ge=-2000.0, le=2000.0, description="mm")
    yaw: float = Field(ge=-180.0, le=180.0, description="deg")
    pitch: float = Field(ge=-180.0, le=180.0, description="deg")
    roll: float = Field(ge=-180.0, le=180.0, description="deg")


QaKind = Literal["daily", "sag"]
QaProfile = Literal["conventional", "srs"]
_QA_REASON = Field(min_length=8, max_length=256, description="why (audited)")


class QaStartRequest(BaseModel):
    """Open a QA session (no clinical session open): the QA home pose is the couch pose now."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: QaKind = Field(default="daily", description="daily: TG-142 daily QA; sag: couch "
                         "sag at long extensions (commissioning)")
    profile: QaProfile | None = Field(default=None,
                                      description="tolerance profile; default the room's qa.profile")
    load_kg: float = Field(default=0.0, ge=0.0, le=300.0, description="load on the couch")


# Where a QA phantom may be laid at the QA home pose (room frame, mm): a couch-sag run lays
# it up to qa.sag_max_extension_mm (<= 1200) toward the foot.
_PhantomAt = Annotated[float, Field(ge=-1500.0, le=1500.0)]


class QaImageRequest(BaseModel):
    """A CBCT of the QA phantom, read by igrtd's registration worker."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    image: str = Field(min_length=1, max_length=4096,
                       description="image file or DICOM directory, as igrtd sees it")
    label: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:+-]+$",
                       description='"baseline" for the reference image (the first), any '
                       'other label for the later ones')
    load_kg: float | None = Field(default=None, ge=0.0, le=300.0,
                                  description="load on the couch now; default the session's")
    phantom_at_mm: tuple[_PhantomAt, _PhantomAt, _PhantomAt] = Field(
        default=(0.0, 0.0, 0.0), strict=False,
        description="where the phantom's centre was laid at the QA home pose, room frame "
        "(x, y, z mm; default the treatment isocentre); e.g. (0, -E, 0) in a couch-sag run "
        "extended by E. The BB's home position is this plus qa.phantom_bb_offset_mm")


class QaMoveRequest(BaseModel):
    """A QA move to an absolute couch pose within the QA envelope of the QA home pose."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    target: QaPose


class QaFinishRequest(BaseModel):
    """End the QA session: evaluate and store the result, or abort it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    abort: bool = Field(default=False, description="close without evaluating (stored as "
                        "aborted; never passes)")
    reason: str | None = Field(default=None, min_length=8, max_length=256,
                               description="why it is aborted (needed with abort)")


class QaResultsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: QaKind | None = None
    limit: int = Field(default=20, ge=1, le=500)


class QaOverrideRequest(BaseModel):
    """Let clinical corrections through for the open clinical session without a passed
    daily QA (physicist; audited with the reason)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    reason: str = _QA_REASON


class QaCalibrationProposeRequest(BaseModel):
    """Propose a calibration from stored QA results (it applies only once approved)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    result_id: int | None = Field(default=None, ge=1,
                                  description="daily QA result; default the newest")
    sag_result_id: int | None = Field(default=None, ge=1,
                                      description="couch-sag result; default the newest, if any")
    reason: str | None = Field(default=None, max_length=256)


class QaCalibrationApproveRequest(BaseModel):
    """Second approval of a proposed calibration, by another physicist: it becomes active."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    version: int = Field(ge=1)


class QaCalibrationRevertRequest(BaseModel):
    """Make an earlier approved calibration active again; version 0: none."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    version: int = Field(ge=0, description="approved version to return to; 0 = no calibration")
    reason: str = _QA_REASON


class QaCalibrationsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    limit: int = Field(default=20, ge=1, le=500)


class CommandError(Exception):
    """A command refused by the daemon; `reason` is the one-line answer to the user.

    `code` is one of `ErrorCode` (given as the enum or its text); any other
    text is a programming error and raises ValueError here, which the
    dispatcher answers as `internal`, so an invented code never reaches a user.
    """

    def __init__(self, reason: str, code: ErrorCode | str = ErrorCode.REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = ErrorCode(code)


# What a command answers: the `result` of a reply line (local socket) or of a
# reply message (MQTT). JSON, so mypy proves every front end can send it as is.
Reply: TypeAlias = JsonObject


class RoomCommands(Protocol):
    async def status(self, actor: Actor) -> Reply: ...
    async def propose(self, actor: Actor, req: ProposeRequest) -> Reply: ...
    async def confirm(self, actor: Actor, proposal_id: str) -> Reply: ...
    async def approve(self, actor: Actor, proposal_id: str) -> Reply: ...
    async def hold(self, actor: Actor, proposal_id: str) -> Reply:
        """Hold-to-run heartbeat from a console (>= 10 Hz while the move runs)."""
        ...
    async def release(self, actor: Actor) -> Reply: ...
    async def stop(self, actor: Actor, reason: str) -> Reply: ...
    async def reset(self, actor: Actor) -> Reply: ...
    async def interlocks(self, actor: Actor) -> Reply: ...
    async def open_session(self, actor: Actor, req: SessionRequest) -> Reply: ...
    async def close_session(self, actor: Actor) -> Reply: ...
    async def record_imaging(self, actor: Actor, req: ImagingRequest) -> Reply: ...
    async def register(self, actor: Actor, req: RegisterRequest) -> Reply: ...
    async def enter_service(self, actor: Actor) -> Reply: ...
    async def exit_service(self, actor: Actor) -> Reply: ...
    async def jog(self, actor: Actor, req: JogRequest) -> Reply: ...
    async def diag(self, actor: Actor, bundle: bool = False) -> Reply: ...
    async def monitor_start(self, actor: Actor, req: MonitorStartRequest) -> Reply: ...
    async def monitor_stop(self, actor: Actor, req: MonitorStopRequest) -> Reply: ...
    async def monitor_status(self, actor: Actor) -> Reply: ...
    async def arms(self, actor: Actor, req: ArmsRequest) -> Reply: ...
    async def qa_start(self, actor: Actor, req: QaStartRequest) -> Reply: ...
    async def qa_image(self, actor: Actor, req: QaImageRequest) -> Reply: ...
    async def qa_move(self, actor: Actor, req: QaMoveRequest) -> Reply: ...
    async def qa_finish(self, actor: Actor, req: QaFinishRequest) -> Reply: ...
    async def qa_results(self, actor: Actor, req: QaResultsRequest) -> Reply: ...
    async def qa_override(self, actor: Actor, req: QaOverrideRequest) -> Reply: ...
    async def qa_calibration_propose(self, actor: Actor,
                                     req: QaCalibrationProposeRequest) -> Reply: ...
    async def qa_calibration_approve(self, actor: Actor,
                                     req: QaCalibrationApproveRequest) -> Reply: ...
    async def qa_calibration_revert(self, actor: Actor,
                                    req: QaCalibrationRevertRequest) -> Reply: ...
    async def qa_calibrations(self, actor: Actor, req: QaCalibrationsRequest) -> Reply: ...

