"""A simulated room description: the file `igrt-sim up ROOM.json` stands a room up from.

It says what the simulator builds (couch, PLC, kV imager, broker, patient,
users), never how igrtd is configured: the simulator writes igrtd's
configuration itself, into a run directory of its own. That is what keeps the
control API away from production: igrt-sim refuses anything but a
description (the `format` key), and names an igrtd room configuration as such.

    python -m sim.room_description --write-schema   # docs/schemas/sim/sim-room.schema.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictFloat, ValidationError, field_validator

from daemon.config_sections import STANDARD_BAUD_RATES
from drivers.couch_protocol import DEFAULT_BAUDRATE
from safety.pose import Pose
from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads
from sim.qa_phantom import QaPhantomSpec
from sim.room_imperfections import Imperfections
from sim.validation import Strict, one_line, schema_main

FORMAT = "igrt-sim-room/1"
ROOMS_DIR = Path(__file__).resolve().parent / "rooms"
DEFAULT_ROOM = ROOMS_DIR / "default.json"
# Beside, not among, the console's generated schemas (daemon.command_docs owns docs/schemas/*).
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "sim" / "sim-room.schema.json"
MAX_BYTES = 1 << 16
MAX_DEPTH = 8

_Coord = Annotated[StrictFloat, Field(ge=-500.0, le=500.0, allow_inf_nan=False)]
_Drift = Annotated[StrictFloat, Field(ge=-5.0, le=5.0, allow_inf_nan=False)]


class ProductionConfigError(ValueError):
    """The file is an igrtd room configuration, not a simulated room description."""


class CouchPose(Strict):
    """A couch pose within the simulated controller's travel (sim/couch.py)."""

    lat: float = Field(default=0.0, ge=-250.0, le=250.0, description="mm")
    long: float = Field(default=0.0, ge=-600.0, le=600.0, description="mm")
    vert: float = Field(default=0.0, ge=-400.0, le=200.0, description="mm")
    yaw: float = Field(default=0.0, ge=-95.0, le=95.0, description="deg")
    pitch: float = Field(default=0.0, ge=-3.0, le=3.0, description="deg")
    roll: float = Field(default=0.0, ge=-3.0, le=3.0, description="deg")

    def pose(self) -> Pose:
        return Pose(self.lat, self.long, self.vert, self.yaw, self.pitch, self.roll)


class SetupError(Strict):
    """How far the patient lies from where the plan wants (couch frame)."""

    lat: float = Field(default=0.0, ge=-100.0, le=100.0, description="mm")
    long: float = Field(default=0.0, ge=-100.0, le=100.0, description="mm")
    vert: float = Field(default=0.0, ge=-100.0, le=100.0, description="mm")
    yaw: float = Field(default=0.0, ge=-10.0, le=10.0, description="deg")
    pitch: float = Field(default=0.0, ge=-3.0, le=3.0, description="deg")
    roll: float = Field(default=0.0, ge=-3.0, le=3.0, description="deg")

    def pose(self) -> Pose:
        return Pose(self.lat, self.long, self.vert, self.yaw, self.pitch, self.roll)


class CouchLink(Strict):
    """igrtd's serial link options for the couch (igrtd's couch config section).

    `baudrate` is the line speed of both ends: the simulated controller runs its
    wire at it and igrtd's configuration names it, so the two cannot differ."""

    baudrate: int = Field(default=DEFAULT_BAUDRATE,
                          description="8N1; one of igrtd's standard rates "
                          f"({', '.join(map(str, STANDARD_BAUD_RATES))})")
    heartbeat_interval_s: float = Field(default=0.05, ge=0.005, le=0.1)
    reply_timeout_s: float = Field(default=0.25, ge=0.01, le=5.0)
    link_timeout_s: float = Field(default=0.3, ge=0.05, le=5.0)

    @field_validator("baudrate")
    @classmethod
    def _standard_baud(cls, v: int) -> int:
        # igrtd refuses any other rate; refuse it here, before anything starts.
        if v not in STANDARD_BAUD_RATES:
            raise ValueError(f"{v} baud is not one of igrtd's standard rates "
                             f"({', '.join(map(str, STANDARD_BAUD_RATES))})")
        return v


class CouchSpec(Strict):
    start_pose: CouchPose = CouchPose()
    speed_scale: float = Field(default=1.0, ge=0.1, le=20.0,
                               description="1: a 10 mm shift takes about 1 s")
    noise_mm: float = Field(default=0.01, ge=0.0, le=1.0, description="reported position noise")
    link: CouchLink = CouchLink()


class BrokerSpec(Strict):
    enabled: bool = True
    consoles: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default=["console1", "console2"], max_length=16,
        description="broker accounts for console machines (each gets its own password)")

    @field_validator("consoles")
    @classmethod
    def _not_igrtd(cls, v: list[str]) -> list[str]:
        if "igrtd" in v or len(set(v)) != len(v):
            raise ValueError("console ids must be unique and not 'igrtd' (the daemon's account)")
        return v


class Breathing(Strict):
    amplitude_mm: float = Field(default=0.0, ge=0.0, le=30.0, description="peak to peak")
    period_s: float = Field(default=4.0, ge=1.0, le=20.0)


class PatientSpec(Strict):
    iso_mm: tuple[_Coord, _Coord, _Coord] = Field(default=(8.0, -12.0, 20.0), strict=False)
    patient_position: Literal["HFS", "HFP", "FFS", "FFP", "HFDL", "HFDR", "FFDL", "FFDR"] = "HFS"
    setup_error: SetupError = SetupError(lat=6.0, long=4.0, vert=-3.0, yaw=1.5, pitch=1.0,
                                         roll=-0.8)
    breathing: Breathing = Breathing()
    drift_mm_s: tuple[_Drift, _Drift, _Drift] = Field(
        default=(0.0, 0.0, 0.0), strict=False, description="room x, y, z")


class UserSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["therapist", "approver", "service", "viewer"]
    identity: Literal["this_os_account", "demo_key"] = Field(
        description="this_os_account: the local socket's peer credentials; demo_key: signs "
        "with a demo Ed25519 key written to the run directory (never a real room's key)")


def _demo_users() -> list[UserSpec]:
    return [UserSpec(name="alice", role="therapist", identity="this_os_account"),
            UserSpec(name="bob", role="approver", identity="demo_key"),
            UserSpec(name="sam", role="service", identity="demo_key"),
            UserSpec(name="vic", role="viewer", identity="demo_key")]


class RoomDescription(Strict):
    """A simulated treatment room, as igrt-sim builds it."""

    format: Literal["igrt-sim-room/1"] = Field(
        description="marks a simulated room description; igrtd configurations have none")
    room: str = Field(default="sim", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    couch: CouchSpec = CouchSpec()
    plc: bool = Field(default=True, description="room safety PLC on loopback Modbus TCP")
    plc_heartbeat_stale_s: float = Field(
        default=0.1, ge=0.01, le=2.0,
        description="igrtd's plc.heartbeat_stale_s in this room: how long the PLC heartbeat "
        "may go unseen changing before the room counts as unsafe. Raise it only for a room "
        "whose machine pauses longer than that (a shared CI machine, "
        "docs/integration-testing.md), never to hide a PLC fault")
    kv_imager: bool = Field(default=True, description="simulated kV imaging system")
    broker: BrokerSpec = BrokerSpec()
    record: bool = Field(default=False, description="igrtd records the session to "
                         "RUN_DIR/recording.jsonl, for igrt-sim replay (docs/record-replay.md)")
    patient: PatientSpec = PatientSpec()
    users: list[UserSpec] = Field(default_factory=_demo_users, min_length=1, max_length=32)
    imperfections: Imperfections | None = Field(
        default=None, description="simulator only: imaging isocentre offset, couch axis "
        "scale/offset errors, sag, load, repeatability (sim/room_imperfections.py); "
        "null: a perfect room")
    qa_phantom: QaPhantomSpec = Field(
        default=QaPhantomSpec(), description="the daily QA cube phantom (sim/qa_phantom.py), "
        "imaged by op acquire_cbct with subject qa_phantom")
    qa_gate: bool = Field(default=False, description="igrtd's qa.gate: clinical corrections "
                          "need a passed daily QA (false: the gate is off in this room)")

    @field_validator("users")
    @classmethod
    def _users_distinct(cls, users: list[UserSpec]) -> list[UserSpec]:
        names = [u.name for u in users]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        if sum(u.identity == "this_os_account" for u in users) > 1:
            # igrtd maps one OS uid to one person (daemon/config.py).
            raise ValueError("at most one user can be this_os_account")
        return users


def _production_markers(data: dict[str, Any]) -> list[str]:
    couch = data.get("couch")
    marks: list[str] = [k for k in ("state_dir", "socket_path", "mqtt", "motion", "binding")
                        if k in data]
    if isinstance(couch, dict) and "port" in couch:
        marks.insert(0, "couch.port")
    return marks


def parse_description(text: str | bytes, where: str = "<room>") -> RoomDescription:
    """The description, or ValueError (ProductionConfigError for an igrtd config) in one line."""
    try:
        data = strict_loads(text, max_depth=MAX_DEPTH, max_bytes=MAX_BYTES)
    except JsonInputError as exc:
        raise ValueError(f"{where}: not a room description: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a room description is a JSON object")  # noqa: TRY004 - refused input, exit 2
    marks = _production_markers(data)
    if marks and "format" not in data:
        raise ProductionConfigError(
            f"{where} is an igrtd room configuration (production config: has "
            f"{', '.join(marks)}), not a simulated room description; igrt-sim only runs "
            f"rooms it builds itself from a description such as {DEFAULT_ROOM.name}")
    try:
        return RoomDescription.model_validate(data)
    except ValidationError as exc:
        raise ValueError(one_line(exc, f"{where}: ")) from None


def load_description(path: Path | None) -> RoomDescription:
    path = path or DEFAULT_ROOM
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_description(raw, str(path))


def schema_text() -> str:
    schema = RoomDescription.model_json_schema()
    schema["$id"] = "https://igrt.example/schemas/sim-room.schema.json"
    schema["title"] = "igrt simulated room description"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    return schema_main("python -m sim.room_description", SCHEMA_PATH, schema_text, argv)


if __name__ == "__main__":
    raise SystemExit(main())
