"""Room configuration: one validated file describes devices, couch model,
verdict policy, motion timing and users.

`igrtd --check-config FILE` reports every problem at once with its location
(pydantic collects all errors rather than stopping at the first).

What --check-config accepts, igrtd starts with (issue 11): the file is read
with safety.strict_json (no NaN/Infinity, duplicate keys or deep nesting);
numbers and booleans are strict (no `true` for 1, no "5" for 5); every number
has a physically plausible range and the timing rules between fields hold
(PLC staleness vs polling, hold timeout vs supervision period, couch link
timeout vs heartbeat); user keys parse as Ed25519 and the couch model and
verdict policy validate as RoomService builds them. A test builds igrtd's
start-up objects from every configuration this module accepts.

The file's schema is three modules: `daemon.config_sections` (one strict model
per section, each with its own cross-field timing rule), `daemon.config_problems`
(one located line per problem) and this one: the whole file, the checks that
build the nested safety models as RoomService does, and loading. Import from here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from daemon.api import Role
from daemon.config_dicom import DicomConfig
from daemon.config_problems import (
    ConfigError,
    Located,
    nested_problems,
    not_numbers,
    shown,
    unit_of,
)
from daemon.config_sections import (
    PLC_IDLE_POLL_FLOOR_S,
    PLC_STALE_POLL_CYCLES,
    STANDARD_BAUD_RATES,
    BindingConfig,
    CouchLinkConfig,
    KvViewConfig,
    MonitoringConfig,
    MotionConfig,
    MqttConfig,
    PlcConfig,
    QaConfig,
    RecordConfig,
    StrictModel,
    UserConfig,
)
from daemon.errors import printable
from safety.collision_config import CollisionConfig
from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads

__all__ = [
    "CONFIG_MAX_BYTES",
    "CONFIG_MAX_DEPTH",
    "PLC_IDLE_POLL_FLOOR_S",
    "PLC_STALE_POLL_CYCLES",
    "STANDARD_BAUD_RATES",
    "BindingConfig",
    "ConfigError",
    "CouchLinkConfig",
    "KvViewConfig",
    "MonitoringConfig",
    "MotionConfig",
    "MqttConfig",
    "PlcConfig",
    "QaConfig",
    "RecordConfig",
    "RoomConfig",
    "UserConfig",
    "load_config",
    "parse_config",
]

# A configuration file is small and flat; anything deeper or larger is not one.
CONFIG_MAX_DEPTH = 16
CONFIG_MAX_BYTES = 1 << 20


class RoomConfig(StrictModel):
    room: str = Field(default="room1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    state_dir: Path = Field(default=Path("/var/lib/igrt"), strict=False)
    socket_path: Path | None = Field(
        default=None, strict=False, description="local control socket; default state_dir/igrtd.sock")
    couch: CouchLinkConfig
    couch_model: dict[str, object] | None = Field(default=None, description="couch model; default: contract defaults")
    policy: dict[str, object] | None = Field(default=None, description="verdict thresholds; default: contract defaults")
    plc: PlcConfig | None = None
    mqtt: MqttConfig | None = None
    motion: MotionConfig = MotionConfig()
    binding: BindingConfig = BindingConfig()
    monitoring: MonitoringConfig | None = Field(
        default=None, description="intrafraction monitoring; absent: not offered in this room")
    record: RecordConfig | None = Field(
        default=None, description="session recording for replay; absent: off")
    dicom: DicomConfig | None = Field(
        default=None, description="DICOM node (igrt-dicomd, docs/dicom.md); absent: none")
    qa: QaConfig = Field(default_factory=QaConfig,
                         description="daily QA gate, tolerances and QA moves (docs/qa.md)")
    collision: CollisionConfig = Field(
        default_factory=CollisionConfig,
        description="collision model: margins, room geometry, default patient envelope "
        "(docs/collision.md)")
    users: list[UserConfig] = Field(min_length=1)
    users_file: Path | None = Field(
        default=None, strict=False,
        description="user registry file (`igrtctl users add/remove`): its users are added to "
        "`users` and re-read when it changes (docs/console-api.md 'User registry')")

    @field_validator("users")
    @classmethod
    def _unique_users(cls, users: list[UserConfig]) -> list[UserConfig]:
        seen: set[str] = set()
        for u in users:
            if u.name in seen:
                raise ValueError(f"user {u.name!r} listed twice")
            seen.add(u.name)
        uids = [u.local_uid for u in users if u.local_uid is not None]
        if len(uids) != len(set(uids)):  # one OS account is one person: never two igrt users
            raise ValueError(f"local_uid {max(uids, key=uids.count)} is given to two users")
        return users

    # Validate the nested safety models here, as RoomService builds them at start,
    # so --check-config reports what would otherwise stop igrtd with a traceback.
    @field_validator("couch_model")
    @classmethod
    def _couch_model_valid(cls, v: dict[str, object] | None) -> dict[str, object] | None:
        if v is not None:
            _check_couch_model(v)
        return v

    @field_validator("policy")
    @classmethod
    def _policy_valid(cls, v: dict[str, object] | None) -> dict[str, object] | None:
        if v is not None:
            _check_policy(v)
        return v

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


# Physically plausible envelopes: no couch travels metres or turns half a circle.
_MAX_RANGE = {"mm": 2000.0, "deg": 180.0}
# The bounds of motion.plausible_speed_*: a speed above them makes the position
# plausibility check (which uses max_speed) too loose to mean anything.
_MAX_SPEED = {"mm": 1000.0, "deg": 100.0}
_MAX_PIVOT_MM = 2000.0
# Verdict thresholds: a correction past these is not a set-up correction.
_POLICY_MAX = {
    "tolerance_translation_mm": 10.0, "tolerance_rotation_deg": 3.0,
    "second_approval_shift_mm": 100.0, "second_approval_rotation_deg": 10.0,
    "second_approval_residual_rotation_deg": 10.0,
    "refuse_shift_mm": 100.0, "refuse_rotation_deg": 10.0,
}


def _check_couch_model(data: dict[str, object]) -> None:
    from safety.couch_model import CouchModel
    from safety.pose import UNITS

    problems = not_numbers(data)
    if problems:
        raise Located(*problems)
    try:
        model = CouchModel.from_mapping(data)
    except (ValueError, TypeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Located(("", text.removeprefix("couch model: "))) from None
    for axis, rng in model.ranges.items():
        unit = UNITS[axis]
        lim = _MAX_RANGE[unit]
        for end, v in (("min", rng.min), ("max", rng.max)):
            if not abs(v) <= lim:
                problems.append((f"ranges.{axis}", (f"{end} {v:g} {unit} is outside "
                                                    f"+-{lim:g} {unit}, beyond any couch")))
    for i, v in enumerate(model.pivot):
        if not abs(v) <= _MAX_PIVOT_MM:
            problems.append((f"pivot[{i}]", f"{v:g} mm is outside +-{_MAX_PIVOT_MM:g} mm"))
    for axis, speed in (model.max_speed or {}).items():
        unit = UNITS[axis]
        if not speed <= _MAX_SPEED[unit]:
            problems.append((f"max_speed.{axis}", (f"{speed:g} {unit}/s exceeds the limit "
                                                   f"{_MAX_SPEED[unit]:g} {unit}/s")))
    if problems:
        raise Located(*problems)


def _check_policy(data: dict[str, object]) -> None:
    from safety.policy import VerdictPolicy

    try:
        VerdictPolicy.model_validate(data, strict=True)
    except ValidationError as exc:
        raise Located(*nested_problems(exc)) from None
    problems = []
    for key, lim in _POLICY_MAX.items():
        v = data.get(key)
        # VerdictPolicy accepted the data strictly: a key present holds a number.
        if isinstance(v, int | float) and not v <= lim:
            unit = unit_of((key,))
            problems.append((key, f"{shown(v)}{unit} exceeds the limit {lim:g}{unit}"))
    if problems:
        raise Located(*problems)


def parse_config(text: str | bytes, path: Path = Path("<config>")) -> RoomConfig:
    """The validated configuration, or ConfigError listing every problem found."""
    try:
        data = strict_loads(text, max_depth=CONFIG_MAX_DEPTH, max_bytes=CONFIG_MAX_BYTES)
    except JsonInputError as exc:
        raise ConfigError(path, [printable(f"not a valid configuration file: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(path, ["(top level): expected a JSON object"])
    try:
        return RoomConfig.model_validate(data)
    except ValidationError as exc:
        problems = [printable(f"{w}: {' '.join(m.split())}") for w, m in nested_problems(exc)]
        raise ConfigError(path, problems) from None
    # A validator of a nested model (KvGeometry, BeamHoldPolicy, CouchModel) failing
    # other than with ValueError is still a refused file, never a traceback at start.
    except Exception as exc:  # noqa: BLE001
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(path, [printable(f"(top level): cannot validate: "
                                            f"{type(exc).__name__}: {detail}")]) from None


def _file_problems(config: RoomConfig) -> list[str]:
    """Files igrtd reads at start (daemon.console_link.open_console): unreadable ones
    are refused here, in one line, rather than by a traceback when the console opens."""
    problems: list[str] = []
    if config.users_file is not None:
        from daemon.console.users import RegistryError, read_users_file

        try:
            read_users_file(config.users_file, (u.name for u in config.users))
        except RegistryError as exc:
            problems.append(f"users_file: {exc}")
    m = config.mqtt
    if m is None:
        return problems
    for where, file, text in (("mqtt.password_file", m.password_file, True),
                              ("mqtt.tls_ca", m.tls_ca, False)):
        if file is None:
            continue
        try:
            raw = file.read_bytes()
            if text:
                raw.decode("utf-8")
        except OSError as exc:
            problems.append(f"{where}: cannot read {file}: {exc.strerror}")
        except UnicodeDecodeError:
            problems.append(f"{where}: {file} is not UTF-8 text")
    return problems


def load_config(path: Path) -> RoomConfig:
    """The configuration igrtd runs with: parse_config, plus the files it names."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    config = parse_config(raw, path)
    problems = _file_problems(config)
    if problems:
        raise ConfigError(path, problems)
    return config
