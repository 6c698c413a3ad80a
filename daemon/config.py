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

Why one module of ~570 lines: it is the schema of one file; the cross-field
timing rules need the sections side by side, and --check-config must see
every section to report every problem at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
from daemon.errors import printable
from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads

# A configuration file is small and flat; anything deeper or larger is not one.
CONFIG_MAX_DEPTH = 16
CONFIG_MAX_BYTES = 1 << 20

# Serial rates a couch controller UART actually runs at; anything else (1e30,
# 1, true) is a typo that would only show as a dead link at start.
STANDARD_BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

# igrtd polls the PLC at max(poll_interval_s, this) while no motion is possible
# (daemon.plc_link.open_plc), and the driver refuses a heartbeat staleness limit
# below 4 idle poll cycles (drivers.plc._check_config).
PLC_IDLE_POLL_FLOOR_S = 0.02
PLC_STALE_POLL_CYCLES = 4

# Nonblank text without surrounding whitespace: a host name, a device path.
_NONBLANK = r"^\S(.*\S)?$"


class _Strict(BaseModel):
    # strict: a JSON `true` is not the number 1 and "5" is not 5 (pydantic's lax
    # mode would accept both); allow_inf_nan=False: every number is finite.
    # Fields whose JSON form is legitimately converted (paths, enums, tuples
    # from arrays) opt out with Field(strict=False) and use Strict* items.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _lax(**kwargs: Any) -> Any:
    """Field for a value JSON cannot spell natively (Path, enum, tuple)."""
    return Field(strict=False, **kwargs)


class _Located(ValueError):
    """Problems found by a validator, each at a place inside the field or model that
    raised it ("" = that place itself), so the report points at the exact key."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        super().__init__("; ".join(f"{w}: {m}" if w else m for w, m in self.problems))


class CouchLinkConfig(_Strict):
    port: str = Field(min_length=1, max_length=4096, pattern=_NONBLANK,
                      description="serial device path of the couch controller")
    baudrate: int = Field(default=115200, description="one of STANDARD_BAUD_RATES")
    heartbeat_interval_s: float = Field(
        default=0.05, ge=0.005, le=0.1,
        description="the controller faults after 250 ms without a host frame (its default)")
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
        least = 3 * self.heartbeat_interval_s
        if self.link_timeout_s < least:
            raise _Located(("link_timeout_s", (
                f"{self.link_timeout_s} s is below 3 heartbeat intervals ({least:g} s at "
                f"heartbeat_interval_s {self.heartbeat_interval_s} s)")))
        return self


class PlcConfig(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, pattern=_NONBLANK)
    port: int = Field(default=502, ge=1, le=65535)
    poll_interval_s: float = Field(default=0.003, ge=0.0005, le=0.1)
    heartbeat_stale_s: float = Field(default=0.1, ge=0.01, le=2.0)

    @property
    def idle_poll_interval_s(self) -> float:
        return max(self.poll_interval_s, PLC_IDLE_POLL_FLOOR_S)

    @model_validator(mode="after")
    def _stale_covers_polls(self) -> PlcConfig:
        least = PLC_STALE_POLL_CYCLES * self.idle_poll_interval_s
        if self.heartbeat_stale_s < least:
            raise _Located(("heartbeat_stale_s", (
                f"{self.heartbeat_stale_s} s is below {PLC_STALE_POLL_CYCLES} idle poll cycles "
                f"({least:g} s; igrtd polls at max(poll_interval_s, {PLC_IDLE_POLL_FLOOR_S} s) "
                "when idle): a healthy PLC would read as stale")))
        return self


class MqttConfig(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, pattern=_NONBLANK)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = Field(default="igrtd", min_length=1, max_length=256)
    password_file: Path | None = _lax(default=None)
    tls_ca: Path | None = _lax(default=None)


class MotionConfig(_Strict):
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
        if self.hold_timeout_s < least:
            raise _Located(("hold_timeout_s", (
                f"{self.hold_timeout_s} s is below 4 supervision periods ({least:g} s at "
                f"supervision_period_s {self.supervision_period_s} s)")))
        return self


class KvViewConfig(_Strict):
    """One commissioned kV source/detector pair used for intrafraction imaging."""

    angle_deg: float = Field(ge=-360.0, le=360.0)
    sad_mm: float = Field(default=1000.0, ge=100.0, le=5000.0)
    sid_mm: float = Field(default=1500.0, ge=100.0, le=5000.0)
    size_px: tuple[Annotated[StrictInt, Field(ge=16, le=8192)],
                   Annotated[StrictInt, Field(ge=16, le=8192)]] = _lax(
        default=(512, 512), description="(columns, rows)")
    pixel_mm: float = Field(default=0.6, ge=0.01, le=10)
    offset_mm: tuple[Annotated[StrictFloat, Field(ge=-500.0, le=500.0, allow_inf_nan=False)],
                     Annotated[StrictFloat, Field(ge=-500.0, le=500.0, allow_inf_nan=False)]] = _lax(
        default=(0.0, 0.0))

    @model_validator(mode="after")
    def _geometry_valid(self) -> KvViewConfig:
        self.geometry()
        return self

    def geometry(self) -> Any:
        from imaging.drr import KvGeometry

        return KvGeometry(angle_deg=self.angle_deg, sad_mm=self.sad_mm, sid_mm=self.sid_mm,
                          size_px=self.size_px, pixel_mm=self.pixel_mm, offset_mm=self.offset_mm)


_BeamTolerance = Annotated[StrictFloat, Field(ge=0.1, le=50.0, allow_inf_nan=False)]


class MonitoringConfig(_Strict):
    """Intrafraction monitoring: kV frames during beam-on, beam hold through the room PLC
    (docs/intrafraction-monitoring.md). Site policy; a treatment may only tighten it."""

    imager_socket: Path | None = _lax(
        default=None, description="Unix socket the kV imaging system connects to; "
        "default state_dir/kv.sock")
    frame_rate_hz: float = Field(default=10.0, ge=1.0, le=30.0,
                                 description="rate igrtd asks the imaging system to acquire at")
    # Ranges are BeamHoldPolicy's, repeated here so a problem is reported at its field.
    tolerance_mm: float = Field(default=3.0, ge=0.1, le=50.0)
    axis_tolerance_mm: tuple[_BeamTolerance, _BeamTolerance, _BeamTolerance] | None = _lax(
        default=None)
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
    # A registration is of today's images: older than a few hours it is not
    # the patient on the couch (issue 11: Infinity let a 10-year-old one through).
    max_registration_age_s: float = Field(default=1800.0, ge=10.0, le=14_400.0)
    # The couch must still be where it was imaged (safety.travel): checked at propose
    # and again before TARGET and GO.
    couch_moved_tolerance_mm: float = Field(default=0.5, ge=0.05, le=5.0)
    couch_moved_tolerance_deg: float = Field(default=0.2, ge=0.01, le=2.0)


class UserConfig(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role = _lax()
    public_key: dict[str, Any] | None = Field(default=None, description="Ed25519 public JWK")

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        # Parsed here with the console's own model, so a key igrtd could not import
        # when it opens the console (a traceback at start) is refused by --check-config.
        if v is not None:
            from daemon.console.users import PublicJwk

            try:
                PublicJwk.model_validate(v)
            except ValidationError as exc:
                raise _Located(*_nested_problems(exc)) from None
        return v
    local_uid: int | None = Field(
        default=None, ge=0, le=2**32 - 2, strict=True,
        description="OS uid whose connections to the local socket are this user (peer credentials)")


class RoomConfig(_Strict):
    room: str = Field(default="room1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    state_dir: Path = _lax(default=Path("/var/lib/igrt"))
    socket_path: Path | None = _lax(default=None, description="local control socket; default state_dir/igrtd.sock")
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
        uids = [u.local_uid for u in users if u.local_uid is not None]
        if len(uids) != len(set(uids)):  # one OS account is one person: never two igrt users
            raise ValueError(f"local_uid {max(uids, key=uids.count)} is given to two users")
        return users

    # Validate the nested safety models here, as RoomService builds them at start,
    # so --check-config reports what would otherwise stop igrtd with a traceback.
    @field_validator("couch_model")
    @classmethod
    def _couch_model_valid(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _check_couch_model(v)
        return v

    @field_validator("policy")
    @classmethod
    def _policy_valid(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
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
    return out


def _join_loc(outer: str, inner: str) -> str:
    if not inner:
        return outer or "(top level)"
    if not outer:
        return inner
    return outer + (inner if inner.startswith("[") else f".{inner}")


# Unit of a field from its name's suffix, so a range error reads "9 s, limit 2 s".
_UNIT_SUFFIXES = (("_mm_s", "mm/s"), ("_deg_s", "deg/s"), ("_ms", "ms"), ("_mm", "mm"),
                  ("_deg", "deg"), ("_hz", "Hz"), ("_px", "px"), ("_s", "s"))
_LIMIT_TEXT = {"greater_than": ("gt", "must be above"),
               "greater_than_equal": ("ge", "is below the minimum"),
               "less_than": ("lt", "must be below"),
               "less_than_equal": ("le", "exceeds the limit")}


def _unit(loc: tuple[Any, ...]) -> str:
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return f" {unit}"
    return ""


def _shown(value: Any) -> str:
    text = "null" if value is None else (
        str(value).lower() if isinstance(value, bool) else repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Any) -> list[tuple[str, str]]:
    """(location, message) pairs for one pydantic error, messages naming the value
    given and, for a range, the limit and the unit."""
    loc = tuple(err.get("loc", ()))
    where = _format_loc(loc)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    given = err.get("input")
    cause = ctx.get("error")
    if isinstance(cause, _Located):
        return [(_join_loc(where, w), m) for w, m in cause.problems]
    if kind in ("value_error", "assertion_error") and cause is not None:
        return [(where or "(top level)", str(cause))]
    if kind in _LIMIT_TEXT:
        key, text = _LIMIT_TEXT[kind]
        unit = _unit(loc)
        return [(where, f"{_shown(given)}{unit} {text} {ctx.get(key)}{unit}")]
    msg = str(err.get("msg", "invalid value"))
    if kind not in ("missing", "extra_forbidden") and not isinstance(given, (dict, list)):
        msg += f" (got {_shown(given)})"
    return [(where or "(top level)", msg)]


def _nested_problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for e in exc.errors():
        out += _describe(e)
    return out


def _not_numbers(value: Any, where: str = "") -> list[tuple[str, str]]:
    """Booleans and numbers-as-text anywhere in a nested safety model: pydantic's
    lax mode there would read `true` as 1 and "5" as 5."""
    if isinstance(value, bool):
        return [(where, f"{_shown(value)} where a number belongs")]
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return []
        return [(where, f"{value!r} is text; write numbers without quotes")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _not_numbers(v, _join_loc(where, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _not_numbers(v, f"{where}[{i}]")]
    return []


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


def _check_couch_model(data: dict[str, Any]) -> None:
    from safety.couch_model import CouchModel
    from safety.pose import UNITS

    problems = _not_numbers(data)
    if problems:
        raise _Located(*problems)
    try:
        model = CouchModel.from_mapping(data)
    except (ValueError, TypeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _Located(("", text.removeprefix("couch model: "))) from None
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
        raise _Located(*problems)


def _check_policy(data: dict[str, Any]) -> None:
    from safety.policy import VerdictPolicy

    try:
        VerdictPolicy.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _Located(*_nested_problems(exc)) from None
    problems = []
    for key, lim in _POLICY_MAX.items():
        v = data.get(key)
        if v is not None and not v <= lim:
            unit = _unit((key,))
            problems.append((key, f"{_shown(v)}{unit} exceeds the limit {lim:g}{unit}"))
    if problems:
        raise _Located(*problems)


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
        problems = [printable(f"{w}: {' '.join(m.split())}") for w, m in _nested_problems(exc)]
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
