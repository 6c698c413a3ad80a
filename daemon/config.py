"""Room configuration: one validated file describes devices, couch model,
verdict policy, motion timing and users.

`igrtd --check-config FILE` reports every problem at once with its location
(pydantic collects all errors rather than stopping at the first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.api import Role


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CouchLinkConfig(_Strict):
    port: str = Field(description="serial device path of the couch controller")
    baudrate: int = Field(default=115200, gt=0)
    heartbeat_interval_s: float = Field(default=0.05, gt=0, le=1.0)
    reply_timeout_s: float = Field(default=0.25, gt=0, le=5.0)
    link_timeout_s: float = Field(
        default=0.3, gt=0, le=5.0, description="no frame from the controller for this long = link lost"
    )


class PlcConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=502, gt=0, lt=65536)
    poll_interval_s: float = Field(default=0.003, gt=0, le=0.1)
    heartbeat_stale_s: float = Field(default=0.1, gt=0, le=2.0)


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, gt=0, lt=65536)
    username: str = "igrtd"
    password_file: Path | None = None
    tls_ca: Path | None = None


class MotionConfig(_Strict):
    target_validity_ms: int = Field(
        default=1500, gt=0, le=10_000, description="how long a TARGET echo may wait for its GO"
    )
    confirmation_validity_s: float = Field(
        default=120.0, gt=0, le=900, description="a confirmation not started within this expires"
    )
    hold_timeout_s: float = Field(
        default=0.25, gt=0, le=2.0, description="hold-to-run heartbeats older than this stop motion"
    )
    supervision_period_s: float = Field(default=0.005, gt=0, le=0.1)
    arrival_tolerance_mm: float = Field(default=0.5, gt=0, le=5)
    arrival_tolerance_deg: float = Field(default=0.2, gt=0, le=2)
    move_timeout_s: float = Field(default=60.0, gt=0, le=600)
    jog_max_speed_mm_s: float = Field(default=2.0, gt=0, le=10, description="service-mode jog")
    jog_max_speed_deg_s: float = Field(default=0.2, gt=0, le=1)
    require_plc_motion_enable: bool = Field(
        default=True, description="when a PLC is configured, its hold-to-run input must be pressed"
    )


class KvViewConfig(_Strict):
    """One commissioned kV source/detector pair used for intrafraction imaging."""

    angle_deg: float = Field(allow_inf_nan=False)
    sad_mm: float = Field(default=1000.0, gt=0, allow_inf_nan=False)
    sid_mm: float = Field(default=1500.0, gt=0, allow_inf_nan=False)
    size_px: tuple[int, int] = Field(default=(512, 512), description="(columns, rows)")
    pixel_mm: float = Field(default=0.6, gt=0, le=10, allow_inf_nan=False)
    offset_mm: tuple[float, float] = (0.0, 0.0)

    @model_validator(mode="after")
    def _geometry_valid(self) -> KvViewConfig:
        self.geometry()
        return self

    def geometry(self) -> Any:
        from imaging.drr import KvGeometry

        return KvGeometry(angle_deg=self.angle_deg, sad_mm=self.sad_mm, sid_mm=self.sid_mm,
                          size_px=self.size_px, pixel_mm=self.pixel_mm, offset_mm=self.offset_mm)


class MonitoringConfig(_Strict):
    """Intrafraction monitoring: kV frames during beam-on, beam hold through the room PLC
    (docs/intrafraction-monitoring.md). Site policy; a treatment may only tighten it."""

    imager_socket: Path | None = Field(
        default=None, description="Unix socket the kV imaging system connects to; "
        "default state_dir/kv.sock")
    frame_rate_hz: float = Field(default=10.0, ge=1.0, le=30.0,
                                 description="rate igrtd asks the imaging system to acquire at")
    tolerance_mm: float = 3.0
    axis_tolerance_mm: tuple[float, float, float] | None = None
    debounce_s: float = 0.2
    release_after_s: float = 0.3
    release_margin_mm: float = 0.5
    max_image_age_s: float = 0.5
    views: list[KvViewConfig] = Field(
        default_factory=lambda: [KvViewConfig(angle_deg=0.0), KvViewConfig(angle_deg=90.0)],
        min_length=2, max_length=4)
    search_radius_mm: float = Field(default=15.0, ge=1.0, le=50.0)
    marker_size_mm: float = Field(default=1.2, ge=0.2, le=10.0)
    min_cnr: float = Field(default=8.0, ge=3.0, le=100.0)
    max_ray_miss_mm: float = Field(default=1.5, gt=0, le=5.0)
    couch_tracking: bool = Field(
        default=False, description="couch corrections during beam-on; not supported yet")

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
        return self

    def policy(self) -> Any:
        from safety.beam_hold import BeamHoldPolicy

        return BeamHoldPolicy(
            tolerance_mm=self.tolerance_mm, axis_tolerance_mm=self.axis_tolerance_mm,
            debounce_s=self.debounce_s, release_after_s=self.release_after_s,
            release_margin_mm=self.release_margin_mm, max_image_age_s=self.max_image_age_s)

    def geometries(self) -> tuple[Any, ...]:
        return tuple(v.geometry() for v in self.views)


class BindingConfig(_Strict):
    max_registration_age_s: float = Field(default=1800.0, gt=0)


class UserConfig(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    public_key: dict[str, Any] | None = Field(default=None, description="Ed25519 public JWK")


class RoomConfig(_Strict):
    room: str = Field(default="room1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    state_dir: Path = Path("/var/lib/igrt")
    socket_path: Path | None = Field(default=None, description="local control socket; default state_dir/igrtd.sock")
    couch: CouchLinkConfig
    couch_model: dict[str, Any] | None = Field(default=None, description="couch model; default: contract defaults")
    policy: dict[str, Any] | None = Field(default=None, description="verdict thresholds; default: contract defaults")
    plc: PlcConfig | None = None
    mqtt: MqttConfig | None = None
    motion: MotionConfig = MotionConfig()
    binding: BindingConfig = BindingConfig()
    monitoring: MonitoringConfig | None = Field(
        default=None, description="intrafraction monitoring; absent: not offered in this room")
    users: list[UserConfig] = Field(min_length=1)

    @field_validator("users")
    @classmethod
    def _unique_users(cls, users: list[UserConfig]) -> list[UserConfig]:
        seen: set[str] = set()
        for u in users:
            if u.name in seen:
                raise ValueError(f"user {u.name!r} listed twice")
            seen.add(u.name)
        return users

    @model_validator(mode="after")
    def _models_valid(self) -> RoomConfig:
        # Validate nested safety models here so --check-config reports them too.
        from safety.couch_model import CouchModel
        from safety.policy import VerdictPolicy

        if self.couch_model is not None:
            CouchModel.from_mapping(self.couch_model)
        if self.policy is not None:
            VerdictPolicy.model_validate(self.policy)
        return self

    @property
    def control_socket(self) -> Path:
        return self.socket_path or self.state_dir / "igrtd.sock"

    @property
    def imager_socket(self) -> Path:
        m = self.monitoring
        return (m.imager_socket if m is not None and m.imager_socket else None) or (
            self.state_dir / "kv.sock")

    def role_of(self, user: str) -> Role | None:
        for u in self.users:
            if u.name == user:
                return u.role
        return None


class ConfigError(Exception):
    """Every problem found in a configuration file, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(text: str, path: Path = Path("<config>")) -> RoomConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(path, [f"line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(path, ["(top level): expected a JSON object"])
    try:
        return RoomConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_format_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(path, problems) from None


def load_config(path: Path) -> RoomConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    return parse_config(text, path)
