"""The sections of the room configuration: couch link, PLC, MQTT, motion timing,
binding, intrafraction monitoring and users (assembled by `daemon.config`).

Each section is strict and range-checked on its own, and carries its own
cross-field timing rule (PLC staleness vs polling, hold timeout vs supervision
period, couch link timeout vs heartbeat): every such rule relates fields of one
section, so a section reads, and is checked, by itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.api import Role
from daemon.config_problems import Located, nested_problems
from drivers.couch_protocol import DEFAULT_BAUDRATE

if TYPE_CHECKING:
    # Imported where used: validating a configuration must not load numpy and
    # SimpleITK (imaging.drr) unless the file has a monitoring section.
    from imaging.drr import KvGeometry
    from safety.beam_hold import BeamHoldPolicy
    from safety.qa_tolerances import Profile

# Serial rates a couch controller UART actually runs at; anything else (1e30,
# 1, true) is a typo that would only show as a dead link at start.
STANDARD_BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

# igrtd polls the PLC at max(poll_interval_s, this) while no motion is possible
# (daemon.plc_link.open_plc), and the driver refuses a heartbeat staleness limit
# below 4 idle poll cycles (drivers.plc_client._check_config).
PLC_IDLE_POLL_FLOOR_S = 0.02
PLC_STALE_POLL_CYCLES = 4

# Nonblank text without surrounding whitespace: a host name, a device path.
_NONBLANK = r"^\S(.*\S)?$"


def _below(value: float, least: float) -> bool:
    """value < least, where a value equal to the limit as written is not below it
    (3 * 0.1 is 0.30000000000000004 in binary floating point: 0.3 must pass)."""
    return value < least and not math.isclose(value, least, rel_tol=1e-9)


class StrictModel(BaseModel):
    # strict: a JSON `true` is not the number 1 and "5" is not 5 (pydantic's lax
    # mode would accept both); allow_inf_nan=False: every number is finite.
    # Fields whose JSON form is legitimately converted (paths, enums, tuples
    # from arrays) opt out with Field(strict=False) and use Strict* items.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CouchLinkConfig(StrictModel):
    port: str = Field(min_length=1, max_length=4096, pattern=_NONBLANK,
                      description="serial device path of the couch controller")
    baudrate: int = Field(
        default=DEFAULT_BAUDRATE,
        description="one of STANDARD_BAUD_RATES, 8N1; the controller's setting "
        "(docs/protocols/couch-serial.md 'Wire time')")
    heartbeat_interval_s: float = Field(
        default=0.05, ge=0.005, le=0.1,
        description="the controller faults after 250 ms without a host frame (its default)")
    standby_heartbeat_interval_s: float = Field(
        default=0.1, ge=0.005, le=0.125,
        description="in STANDBY (no session, nothing can move): at most half the "
        "controller's 250 ms watchdog")
    reply_timeout_s: float = Field(default=0.25, ge=0.01, le=5.0)
    link_timeout_s: float = Field(
        default=0.3, ge=0.05, le=5.0, description="no frame from the controller for this long = link lost"
    )

    @field_validator("baudrate")
    @classmethod
    def _standard_baud(cls, v: int) -> int:
        if v not in STANDARD_BAUD_RATES:
            raise ValueError(f"{v} baud is not a standard serial rate "
                             f"({', '.join(map(str, STANDARD_BAUD_RATES))})")
        return v

    @model_validator(mode="after")
    def _link_timeout_covers_heartbeats(self) -> CouchLinkConfig:
        # Every heartbeat is ACKed; a limit under 3 intervals declares a healthy
        # link lost on ordinary scheduling jitter.
        for name, interval in (("heartbeat_interval_s", self.heartbeat_interval_s),
                               ("standby_heartbeat_interval_s",
                                self.standby_heartbeat_interval_s)):
            least = 3 * interval
            if _below(self.link_timeout_s, least):
                raise Located(("link_timeout_s", (
                    f"{self.link_timeout_s} s is below 3 heartbeat intervals ({least:g} s at "
                    f"{name} {interval} s)")))
        if _below(self.standby_heartbeat_interval_s, self.heartbeat_interval_s):
            raise Located(("standby_heartbeat_interval_s", (
                f"{self.standby_heartbeat_interval_s} s is below heartbeat_interval_s "
                f"({self.heartbeat_interval_s} s): standby is the slowest rate")))
        return self


class PlcConfig(StrictModel):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, pattern=_NONBLANK)
    port: int = Field(default=502, ge=1, le=65535)
    poll_interval_s: float = Field(default=0.003, ge=0.0005, le=0.1)
    heartbeat_stale_s: float = Field(default=0.1, ge=0.01, le=2.0)
    standby_poll_interval_s: float = Field(
        default=0.5, ge=PLC_IDLE_POLL_FLOOR_S, le=1.0,
        description="in STANDBY with both arms parked and still (nothing can move); the "
        "heartbeat staleness limit is 4 of these there")

    @property
    def idle_poll_interval_s(self) -> float:
        return max(self.poll_interval_s, PLC_IDLE_POLL_FLOOR_S)

    @model_validator(mode="after")
    def _stale_covers_polls(self) -> PlcConfig:
        least = PLC_STALE_POLL_CYCLES * self.idle_poll_interval_s
        if _below(self.heartbeat_stale_s, least):
            raise Located(("heartbeat_stale_s", (
                f"{self.heartbeat_stale_s} s is below {PLC_STALE_POLL_CYCLES} idle poll cycles "
                f"({least:g} s; igrtd polls at max(poll_interval_s, {PLC_IDLE_POLL_FLOOR_S} s) "
                "when idle): a healthy PLC would read as stale")))
        if _below(self.standby_poll_interval_s, self.idle_poll_interval_s):
            raise Located(("standby_poll_interval_s", (
                f"{self.standby_poll_interval_s} s is below the idle poll interval "
                f"({self.idle_poll_interval_s:g} s): standby is the slowest rate")))
        return self


class MqttConfig(StrictModel):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, pattern=_NONBLANK)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = Field(default="igrtd", min_length=1, max_length=256)
    password_file: Path | None = Field(default=None, strict=False)
    tls_ca: Path | None = Field(default=None, strict=False)


class MotionConfig(StrictModel):
    target_validity_ms: int = Field(
        default=1500, ge=100, le=10_000, description="how long a TARGET echo may wait for its GO"
    )
    confirmation_validity_s: float = Field(
        default=120.0, ge=5, le=900, description="a confirmation not started within this expires"
    )
    hold_timeout_s: float = Field(
        default=0.25, ge=0.1, le=2.0, description="hold-to-run heartbeats older than this stop motion"
    )
    supervision_period_s: float = Field(default=0.005, ge=0.001, le=0.05)
    arrival_tolerance_mm: float = Field(default=0.5, ge=0.01, le=5)
    arrival_tolerance_deg: float = Field(default=0.2, ge=0.005, le=2)
    move_timeout_s: float = Field(default=60.0, ge=1, le=600)
    jog_max_speed_mm_s: float = Field(default=2.0, ge=0.01, le=10, description="service-mode jog")
    jog_max_speed_deg_s: float = Field(default=0.2, ge=0.001, le=1)
    require_plc_motion_enable: bool = Field(
        default=True, description="when a PLC is configured, its hold-to-run input must be pressed"
    )
    # Position plausibility during a move (safety.plausibility). Axis speeds come from
    # the couch model's max_speed; these are the fallback, an upper bound for any couch.
    plausible_speed_mm_s: float = Field(default=200.0, ge=1, le=1000)
    plausible_speed_deg_s: float = Field(default=20.0, ge=0.1, le=100)
    plausibility_margin_mm: float = Field(default=1.0, ge=0.05, le=10)
    plausibility_margin_deg: float = Field(default=0.2, ge=0.01, le=2)
    path_tolerance_mm: float = Field(default=1.0, ge=0.05, le=10)
    path_tolerance_deg: float = Field(default=0.2, ge=0.01, le=2)

    @model_validator(mode="after")
    def _hold_timeout_spans_supervision(self) -> MotionConfig:
        # A lost hold is only seen at a supervision tick: with fewer than 4 ticks
        # per hold timeout the stop comes late by a large fraction of it.
        least = 4 * self.supervision_period_s
        if _below(self.hold_timeout_s, least):
            raise Located(("hold_timeout_s", (
                f"{self.hold_timeout_s} s is below 4 supervision periods ({least:g} s at "
                f"supervision_period_s {self.supervision_period_s} s)")))
        return self


class KvViewConfig(StrictModel):
    """One commissioned kV source/detector pair used for intrafraction imaging."""

    angle_deg: float = Field(ge=-360.0, le=360.0)
    sad_mm: float = Field(default=1000.0, ge=100.0, le=5000.0)
    sid_mm: float = Field(default=1500.0, ge=100.0, le=5000.0)
    size_px: tuple[Annotated[StrictInt, Field(ge=16, le=8192)],
                   Annotated[StrictInt, Field(ge=16, le=8192)]] = Field(
        default=(512, 512), strict=False, description="(columns, rows)")
    pixel_mm: float = Field(default=0.6, ge=0.01, le=10)
    offset_mm: tuple[Annotated[StrictFloat, Field(ge=-500.0, le=500.0, allow_inf_nan=False)],
                     Annotated[StrictFloat, Field(ge=-500.0, le=500.0, allow_inf_nan=False)]] = Field(
        default=(0.0, 0.0), strict=False)

    @model_validator(mode="after")
    def _geometry_valid(self) -> KvViewConfig:
        self.geometry()
        return self

    def geometry(self) -> KvGeometry:
        from imaging.drr import KvGeometry

        return KvGeometry(angle_deg=self.angle_deg, sad_mm=self.sad_mm, sid_mm=self.sid_mm,
                          size_px=self.size_px, pixel_mm=self.pixel_mm, offset_mm=self.offset_mm)


_BeamTolerance = Annotated[StrictFloat, Field(ge=0.1, le=50.0, allow_inf_nan=False)]


class MonitoringConfig(StrictModel):
    """Intrafraction monitoring: kV frames during beam-on, beam hold through the room PLC
    (docs/intrafraction-monitoring.md). Site policy; a treatment may only tighten it."""

    imager_socket: Path | None = Field(
        default=None, strict=False, description="Unix socket the kV imaging system connects to; "
        "default state_dir/kv.sock")
    frame_rate_hz: float = Field(default=10.0, ge=1.0, le=30.0,
                                 description="rate igrtd asks the imaging system to acquire at")
    # Ranges are BeamHoldPolicy's, repeated here so a problem is reported at its field.
    tolerance_mm: float = Field(default=3.0, ge=0.1, le=50.0)
    axis_tolerance_mm: tuple[_BeamTolerance, _BeamTolerance, _BeamTolerance] | None = Field(
        default=None, strict=False)
    debounce_s: float = Field(default=0.2, ge=0.0, le=5.0)
    release_after_s: float = Field(default=0.3, ge=0.0, le=60.0)
    release_margin_mm: float = Field(default=0.5, ge=0.0, le=50.0)
    max_image_age_s: float = Field(default=0.5, ge=0.01, le=10.0)
    views: list[KvViewConfig] = Field(
        default_factory=lambda: [KvViewConfig(angle_deg=0.0), KvViewConfig(angle_deg=90.0)],
        min_length=2, max_length=4)
    search_radius_mm: float = Field(default=15.0, ge=1.0, le=50.0)
    marker_size_mm: float = Field(default=1.2, ge=0.2, le=10.0)
    min_cnr: float = Field(default=8.0, ge=3.0, le=100.0)
    max_ray_miss_mm: float = Field(default=1.5, gt=0, le=5.0)
    couch_tracking: bool = Field(
        default=False, description="couch corrections during beam-on; not supported yet")
    # Correction between beams (daemon/between_beams.py, docs/intrafraction-monitoring.md).
    correction_after_s: float | None = Field(
        default=None, ge=0.5, le=600.0,
        description="a target held off tolerance this long gets a between-beam couch "
        "correction proposed from the markers (beam held); omitted: never proposed")
    correction_window_s: float = Field(
        default=1.0, ge=0.1, le=30.0,
        description="the frames of this last stretch of the held drift are averaged into the "
        "correction")
    correction_max_spread_mm: float = Field(
        default=1.0, gt=0.0, le=10.0,
        description="a target whose positions in that stretch spread further is still moving: "
        "no correction is proposed until it settles")

    @model_validator(mode="after")
    def _consistent(self) -> MonitoringConfig:
        if self.couch_tracking:
            raise ValueError(
                "couch_tracking: true is not supported by this igrtd: a tracking correction "
                "cannot yet be sent through the MotionGate with hold-to-run and confirmation "
                "during beam-on; set it to false (the beam is held instead)")
        self.policy()  # BeamHoldPolicy names value, limit and unit
        period = 1.0 / self.frame_rate_hz
        if self.max_image_age_s < 2.0 * period:
            raise ValueError(
                f"max_image_age_s {self.max_image_age_s} s is shorter than two frame periods "
                f"({2.0 * period:.3f} s at {self.frame_rate_hz:g} Hz): every late frame would "
                "hold the beam")
        if self.correction_after_s is not None and \
                self.correction_window_s > self.correction_after_s:
            raise ValueError(
                f"correction_window_s {self.correction_window_s} s is longer than "
                f"correction_after_s {self.correction_after_s} s: the averaged frames would "
                "reach back before the drift was held")
        return self

    def policy(self) -> BeamHoldPolicy:
        from safety.beam_hold import BeamHoldPolicy

        return BeamHoldPolicy(
            tolerance_mm=self.tolerance_mm, axis_tolerance_mm=self.axis_tolerance_mm,
            debounce_s=self.debounce_s, release_after_s=self.release_after_s,
            release_margin_mm=self.release_margin_mm, max_image_age_s=self.max_image_age_s)

    def geometries(self) -> tuple[KvGeometry, ...]:
        return tuple(v.geometry() for v in self.views)


class BindingConfig(StrictModel):
    # A registration is of today's images: older than a few hours it is not
    # the patient on the couch (issue 11: Infinity let a 10-year-old one through).
    max_registration_age_s: float = Field(default=1800.0, ge=10.0, le=14_400.0)
    # The couch must still be where it was imaged (safety.travel): checked at propose
    # and again before TARGET and GO.
    couch_moved_tolerance_mm: float = Field(default=0.5, ge=0.05, le=5.0)
    couch_moved_tolerance_deg: float = Field(default=0.2, ge=0.01, le=2.0)


_QaTolerance = Annotated[StrictFloat, Field(gt=0.0, le=20.0, allow_inf_nan=False)]
_BbOffset = Annotated[StrictFloat, Field(ge=-60.0, le=60.0, allow_inf_nan=False)]
QaProfileName = Literal["conventional", "srs"]
# Stricter profiles rank higher: a daily QA passed under a looser profile than the
# configured one does not open the gate.
QA_PROFILE_RANK: dict[str, int] = {"conventional": 0, "srs": 1}


class QaConfig(StrictModel):
    """Daily QA and commissioning (issue 16, docs/qa.md): the gate on clinical
    corrections, the tolerance profile, the QA move envelope and the QA phantom."""

    gate: bool = Field(
        default=True, description="clinical corrections need a daily QA of this room passed "
        "within window_h (a physicist may override for one session)")
    window_h: float = Field(default=24.0, ge=1.0, le=168.0)
    profile: QaProfileName = Field(default="conventional",
                                   description="TG-142 tolerance profile (safety.qa_tolerances)")
    tolerances: dict[QaProfileName, dict[str, _QaTolerance]] | None = Field(
        default=None, strict=False,
        description="per profile, overrides of its tolerances (names of "
        "safety.qa_tolerances.Profile), e.g. {\"srs\": {...}}")
    envelope_mm: float = Field(default=25.0, ge=1.0, le=100.0,
                               description="QA moves: farthest translation from the QA home pose")
    envelope_deg: float = Field(default=2.5, ge=0.1, le=10.0,
                                description="QA moves: farthest rotation from the QA home pose")
    travel_mm: float = Field(
        default=60.0, ge=0.0, le=100.0,
        description="daily QA travel moves (one translation alone, for scale and yaw offset): "
        "farthest from the QA home pose; 0: none")
    sag_max_extension_mm: float = Field(
        default=700.0, ge=0.0, le=1200.0,
        description="couch-sag QA: farthest long extension from the QA home pose")
    phantom_bb_offset_mm: tuple[_BbOffset, _BbOffset, _BbOffset] = Field(
        default=(4.0, -3.0, 2.5), strict=False,
        description="the QA phantom's BB relative to its centre, room frame, couch at the QA "
        "home pose (the phantom's centre set up at the treatment isocentre)")
    patient_load_kg: float = Field(
        default=75.0, ge=0.0, le=300.0,
        description="load assumed on the couch when an active calibration's sag model "
        "compensates a clinical target")

    @model_validator(mode="after")
    def _tolerances_valid(self) -> QaConfig:
        for name in QA_PROFILE_RANK:
            self.profile_for(name)
        return self

    def profile_for(self, name: str) -> Profile:
        """The tolerance profile `name` with this room's overrides (safety.qa_tolerances)."""
        from safety.qa_tolerances import resolve_profile

        overrides = next((v for k, v in (self.tolerances or {}).items() if k == name), None)
        try:
            return resolve_profile(name, overrides)
        except ValueError as exc:
            raise Located((f"tolerances.{name}", str(exc))) from None


class RecordConfig(StrictModel):
    """Session recording (docs/record-replay.md): off unless this section is present."""

    path: Path = Field(strict=False, description="JSON-lines recording file; a new file at "
                       "each start (an existing one is moved aside with a .N suffix)")
    max_mb: float = Field(default=100.0, ge=1.0, le=10_000.0,
                          description="recording stops (and says so) at this size")

    @field_validator("path")
    @classmethod
    def _file_path(cls, v: Path) -> Path:
        if not str(v).strip() or str(v) != str(v).strip() or v.name in ("", ".", ".."):
            raise ValueError(f"{str(v)!r} is not a file path")
        return v


class UserConfig(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role = Field(strict=False)
    public_key: dict[str, object] | None = Field(default=None, description="Ed25519 public JWK")

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, v: dict[str, object] | None) -> dict[str, object] | None:
        # Parsed here with the console's own model, so a key igrtd could not import
        # when it opens the console (a traceback at start) is refused by --check-config.
        if v is not None:
            from daemon.console.users import PublicJwk

            try:
                PublicJwk.model_validate(v)
            except ValidationError as exc:
                raise Located(*nested_problems(exc)) from None
        return v
    local_uid: int | None = Field(
        default=None, ge=0, le=2**32 - 2, strict=True,
        description="OS uid whose connections to the local socket are this user (peer credentials)")

