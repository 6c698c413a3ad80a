"""Every configuration igrtd would refuse at start, `--check-config` refuses first,
each problem on its own line with its location (issue 11, item 9).

Strict types (no true for 1, no "5" for 5), finite numbers, physically plausible
ranges, the cross-field timing rules, keys that parse as Ed25519, and nested safety
models validated at load; the file itself is read with safety.strict_json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, RoomConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
GOOD: dict[str, Any] = {"couch": {"port": "/dev/ttyUSB0"},
                        "users": [{"name": "alice", "role": "therapist"}]}
# A real Ed25519 public key (RFC 8037 test vector).
GOOD_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def _with(**sections: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(GOOD))
    cfg.update(sections)
    return cfg


def _problems(cfg: dict[str, Any] | str) -> list[str]:
    text = cfg if isinstance(cfg, str) else json.dumps(cfg)
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("room.json"))
    for p in info.value.problems:
        assert "\n" not in p and "\r" not in p
    return info.value.problems


def _problem_at(cfg: dict[str, Any] | str, where: str) -> str:
    problems = _problems(cfg)
    hits = [p for p in problems if p.startswith(f"{where}: ")]
    assert hits, problems
    return hits[0]


# ------------------------------------------------------------ the list
def test_infinite_registration_age_is_refused_in_one_line() -> None:
    text = json.dumps(GOOD)[:-1] + ', "binding": {"max_registration_age_s": Infinity}}'
    (problem,) = _problems(text)
    assert "Infinity" in problem and "finite" in problem


def test_a_registration_age_of_1e308_is_refused_at_its_field() -> None:
    p = _problem_at(_with(binding={"max_registration_age_s": 1e308}),
                    "binding.max_registration_age_s")
    assert "1e+308 s exceeds the limit 14400.0 s" in p


def test_true_as_hold_timeout_is_refused() -> None:
    p = _problem_at(_with(motion={"hold_timeout_s": True}), "motion.hold_timeout_s")
    assert "number" in p and "true" in p


def test_true_as_baud_rate_is_refused() -> None:
    _problem_at(_with(couch={"port": "/dev/ttyUSB0", "baudrate": True}), "couch.baudrate")


def test_a_baud_rate_of_1e30_is_refused_naming_the_value() -> None:
    p = _problem_at(_with(couch={"port": "/dev/ttyUSB0", "baudrate": 1e30}), "couch.baudrate")
    assert "1e+30" in p


def test_a_non_standard_baud_rate_is_refused_naming_the_standard_ones() -> None:
    p = _problem_at(_with(couch={"port": "/dev/ttyUSB0", "baudrate": 115201}), "couch.baudrate")
    assert "115201 baud" in p and "115200" in p


def test_a_verdict_tolerance_of_1e308_is_refused() -> None:
    p = _problem_at(_with(policy={"tolerance_translation_mm": 1e308}),
                    "policy.tolerance_translation_mm")
    assert "mm exceeds the limit 10 mm" in p


def test_an_empty_plc_host_is_refused() -> None:
    _problem_at(_with(plc={"host": ""}), "plc.host")


def test_an_empty_couch_port_is_refused() -> None:
    _problem_at(_with(couch={"port": ""}), "couch.port")


def test_a_blank_couch_port_is_refused() -> None:
    _problem_at(_with(couch={"port": "  "}), "couch.port")


def test_a_public_key_that_is_not_ed25519_is_refused_at_its_user() -> None:
    users = [{"name": "alice", "role": "therapist",
              "public_key": {"kty": "OKP", "crv": "Ed25519", "x": "not-a-key"}}]
    _problem_at(_with(users=users), "users[0].public_key.x")


def test_a_public_key_of_another_type_is_refused_at_its_user() -> None:
    users = [{"name": "alice", "role": "therapist", "public_key": {"kty": "RSA", "n": "AQAB"}}]
    _problem_at(_with(users=users), "users[0].public_key.kty")


def test_a_valid_ed25519_key_is_accepted() -> None:
    users = [{"name": "alice", "role": "therapist",
              "public_key": {"kty": "OKP", "crv": "Ed25519", "x": GOOD_X}}]
    assert parse_config(json.dumps(_with(users=users))).users[0].public_key is not None


def test_a_plc_staleness_limit_below_four_idle_polls_is_refused() -> None:
    p = _problem_at(_with(plc={"poll_interval_s": 0.05, "heartbeat_stale_s": 0.1}),
                    "plc.heartbeat_stale_s")
    assert "0.1 s is below 4 idle poll cycles (0.2 s" in p


# ------------------------------------------------------------ the wider rules
def test_a_hold_timeout_shorter_than_four_supervision_periods_is_refused() -> None:
    p = _problem_at(_with(motion={"hold_timeout_s": 0.1, "supervision_period_s": 0.04}),
                    "motion.hold_timeout_s")
    assert "below 4 supervision periods" in p


def test_a_couch_link_timeout_shorter_than_three_heartbeats_is_refused() -> None:
    p = _problem_at(_with(couch={"port": "/dev/x", "heartbeat_interval_s": 0.1,
                                 "link_timeout_s": 0.2}), "couch.link_timeout_s")
    assert "below 3 heartbeat intervals" in p


def test_a_standby_heartbeat_faster_than_the_motion_one_is_refused() -> None:
    p = _problem_at(_with(couch={"port": "/dev/x", "heartbeat_interval_s": 0.05,
                                 "standby_heartbeat_interval_s": 0.02}),
                    "couch.standby_heartbeat_interval_s")
    assert "standby is the slowest rate" in p


def test_a_standby_heartbeat_beyond_half_the_controller_watchdog_is_refused() -> None:
    _problem_at(_with(couch={"port": "/dev/x", "standby_heartbeat_interval_s": 0.2}),
                "couch.standby_heartbeat_interval_s")


def test_a_link_timeout_shorter_than_three_standby_heartbeats_is_refused() -> None:
    p = _problem_at(_with(couch={"port": "/dev/x", "standby_heartbeat_interval_s": 0.12,
                                 "link_timeout_s": 0.3}), "couch.link_timeout_s")
    assert "standby_heartbeat_interval_s" in p


def test_a_plc_standby_poll_faster_than_the_idle_poll_is_refused() -> None:
    p = _problem_at(_with(plc={"poll_interval_s": 0.05, "heartbeat_stale_s": 0.2,
                               "standby_poll_interval_s": 0.03}), "plc.standby_poll_interval_s")
    assert "standby is the slowest rate" in p


@pytest.mark.parametrize("section", [
    {"couch": {"port": "/dev/x", "heartbeat_interval_s": 0.1, "link_timeout_s": 0.3}},
    {"plc": {"poll_interval_s": 0.07, "heartbeat_stale_s": 0.28}},
    {"motion": {"supervision_period_s": 0.03, "hold_timeout_s": 0.12}},
], ids=["couch_link_timeout", "plc_staleness", "hold_timeout"])
def test_a_timing_limit_exactly_at_its_least_value_is_accepted(section: dict[str, Any]) -> None:
    # 3 * 0.1 is 0.30000000000000004 in binary floating point; 0.3 as written is no less.
    parse_config(json.dumps(_with(**section)))


def test_a_number_written_as_text_is_refused() -> None:
    p = _problem_at(_with(motion={"move_timeout_s": "60"}), "motion.move_timeout_s")
    assert "'60'" in p


def test_a_range_error_names_value_limit_and_unit() -> None:
    p = _problem_at(_with(motion={"hold_timeout_s": 9}), "motion.hold_timeout_s")
    assert p == "motion.hold_timeout_s: 9 s exceeds the limit 2.0 s"


def test_true_in_the_couch_model_is_refused_at_its_place() -> None:
    _problem_at(_with(couch_model={"ranges": {"lat": [True, 5]}}), "couch_model.ranges.lat[0]")


def test_a_couch_range_beyond_any_couch_is_refused() -> None:
    ranges = {a: [-1e300, 1e300] for a in ("lat", "long", "vert", "yaw", "pitch", "roll")}
    p = _problem_at(_with(couch_model={"ranges": ranges}), "couch_model.ranges.lat")
    assert "outside +-2000 mm" in p


def test_text_in_the_verdict_policy_is_refused() -> None:
    _problem_at(_with(policy={"refuse_shift_mm": "30"}), "policy.refuse_shift_mm")


def test_true_in_a_kv_view_is_refused_at_its_index() -> None:
    views = [{"angle_deg": 0, "size_px": [True, 512]}, {"angle_deg": 90}]
    _problem_at(_with(monitoring={"views": views}), "monitoring.views[0].size_px[0]")


def test_duplicate_keys_are_refused_in_one_line() -> None:
    (p,) = _problems('{"couch": {"port": "/dev/a"}, "couch": {"port": "/dev/b"}, '
                     '"users": [{"name": "a", "role": "therapist"}]}')
    assert "duplicate key 'couch'" in p


def test_deep_nesting_is_refused_in_one_line() -> None:
    (p,) = _problems('{"a":' + "[" * 5000 + "]" * 5000 + "}")
    assert "nesting depth" in p


def test_a_control_character_in_a_key_stays_on_one_line() -> None:
    (p,) = _problems(json.dumps(_with(**{"\room": 1})))
    assert p.startswith("\\room: ")


def test_every_problem_is_listed_not_only_the_first() -> None:
    bad = _with(couch={"port": "", "baudrate": True}, plc={"host": ""},
                motion={"hold_timeout_s": True}, binding={"max_registration_age_s": 1e308})
    where = {p.split(": ")[0] for p in _problems(bad)}
    assert {"couch.port", "couch.baudrate", "plc.host", "motion.hold_timeout_s",
            "binding.max_registration_age_s"} <= where


def test_an_unreadable_mqtt_password_file_is_refused_by_load_config(tmp_path: Path) -> None:
    cfg = tmp_path / "room.json"
    cfg.write_text(json.dumps(_with(mqtt={"password_file": str(tmp_path / "missing")})))
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems[0].startswith("mqtt.password_file: cannot read ")


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "room.json"
    cfg.write_bytes(b'{"couch": "\xff"}')
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert "UTF-8" in info.value.problems[0]


# ------------------------------------------------------------ the real commands
def _igrtd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


BAD_AT_START = _with(
    plc={"host": "127.0.0.1", "port": 1, "poll_interval_s": 0.05, "heartbeat_stale_s": 0.1},
    users=[{"name": "alice", "role": "therapist",
            "public_key": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 42 + "?"}}])


def test_check_config_lists_each_problem_with_file_and_location(tmp_path: Path) -> None:
    path = tmp_path / "room.json"
    path.write_text(json.dumps(BAD_AT_START))
    r = _igrtd("--check-config", str(path))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert any(line.startswith(f"{path}: plc.heartbeat_stale_s: ") for line in lines)
    assert any(line.startswith(f"{path}: users[0].public_key.x: ") for line in lines)
    assert "Traceback" not in r.stderr


def test_igrtd_started_with_a_config_it_cannot_run_exits_2_without_traceback(
        tmp_path: Path) -> None:
    # These two made igrtd exit at start with a traceback: a restart loop under systemd.
    path = tmp_path / "room.json"
    path.write_text(json.dumps({**BAD_AT_START, "state_dir": str(tmp_path / "state")}))
    r = _igrtd("--config", str(path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith(f"igrtd: {path}: ") for line in lines)
    assert not (tmp_path / "state").exists()


# ------------------------------------------------ check and start agree (property)
_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.floats(allow_nan=False, allow_infinity=False, min_value=0.0, max_value=3.0),
    st.integers(min_value=-10, max_value=2_000_000), st.booleans(), st.sampled_from(
        ["1", "", 1e308, -0.0, 0, 0.0005, 0.003, 0.02, 0.1, 0.25, 9600, 115200, 1e30]))
_FIELDS: dict[str, tuple[str, ...]] = {
    "couch": ("baudrate", "heartbeat_interval_s", "reply_timeout_s", "link_timeout_s"),
    "plc": ("port", "poll_interval_s", "heartbeat_stale_s"),
    "motion": ("target_validity_ms", "confirmation_validity_s", "hold_timeout_s",
               "supervision_period_s", "arrival_tolerance_mm", "move_timeout_s"),
    "binding": ("max_registration_age_s",),
    "policy": ("tolerance_translation_mm", "second_approval_shift_mm", "refuse_shift_mm"),
    "monitoring": ("frame_rate_hz", "tolerance_mm", "debounce_s", "release_margin_mm",
                   "max_image_age_s"),
}


def _default(section: str, name: str) -> Any:
    from daemon import config as c

    model = {"couch": c.CouchLinkConfig, "plc": c.PlcConfig, "motion": c.MotionConfig,
             "binding": c.BindingConfig, "monitoring": c.MonitoringConfig}.get(section)
    if model is None:  # policy: safety.policy.VerdictPolicy
        from safety.policy import VerdictPolicy

        return VerdictPolicy.model_fields[name].default
    return model.model_fields[name].default


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    port = draw(st.sampled_from(["/dev/ttyUSB0", "/dev/ttyS1", "/dev/pts/7", "", " x"]))
    cfg = _with(couch={"port": port})
    for section, fields in _FIELDS.items():
        if not draw(st.booleans()):
            continue
        body = cfg.setdefault(section, {})
        for name in fields:
            if draw(st.booleans()):
                # Mostly near the default (so many configs are accepted and must start),
                # sometimes anything at all.
                default = _default(section, name)
                near = st.sampled_from([0.25, 0.5, 1, 1, 2, 4]).map(
                    lambda k, d=default: type(d)(d * k))
                anything = draw(st.integers(0, 9)) == 0
                body[name] = draw(_NUMBERS if anything else near)
    if draw(st.booleans()):
        x = draw(st.sampled_from([GOOD_X, "A" * 43, "not-a-key", GOOD_X[:-1] + "!"]))
        cfg["users"] = [{"name": "alice", "role": "therapist",
                         "public_key": {"kty": "OKP", "crv": "Ed25519", "x": x}}]
    return cfg


def _start_objects(cfg: RoomConfig) -> None:
    """What igrtd builds from its configuration at start (daemon.main.serve), without I/O."""
    from daemon.console.users import UserRegistry
    from daemon.control import LocalFrontEnd
    from daemon.service import RoomService
    from drivers.couch import CouchClient
    from drivers.plc import RoomPlcClient

    c = cfg.couch
    CouchClient(c.port, baudrate=c.baudrate, heartbeat_interval_s=c.heartbeat_interval_s,
                reply_timeout_s=c.reply_timeout_s, link_timeout_s=c.link_timeout_s)
    if cfg.plc is not None:
        p = cfg.plc  # as daemon.plc_link.open_plc builds it
        RoomPlcClient(p.host, p.port, poll_interval_s=p.poll_interval_s,
                      idle_poll_interval_s=max(p.poll_interval_s, 0.02),
                      heartbeat_stale_s=p.heartbeat_stale_s)
    service = RoomService(cfg, object(), object(), object())
    UserRegistry.from_config_users(cfg.users)
    LocalFrontEnd(service, cfg, replay_cache=object())  # type: ignore[arg-type]
    if cfg.monitoring is not None:
        cfg.monitoring.policy()
        cfg.monitoring.geometries()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_a_config_check_config_accepts_builds_everything_igrtd_builds_at_start(
        cfg: dict[str, Any]) -> None:
    try:
        config = parse_config(json.dumps(cfg))
    except ConfigError as exc:
        assert exc.problems and all("\n" not in p for p in exc.problems)
        return
    _start_objects(config)
