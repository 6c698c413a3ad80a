"""`igrtd --check-config` reports every problem at once, with its location."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon.config import ConfigError, parse_config

GOOD = {"couch": {"port": "/dev/ttyUSB0"}, "users": [{"name": "alice", "role": "therapist"}]}


def _check(tmp_path: Path, cfg: object | str) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "room.json"
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return subprocess.run([sys.executable, "-m", "daemon.main", "--check-config", str(p)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_valid_config_passes(tmp_path: Path) -> None:
    r = _check(tmp_path, GOOD)
    assert r.returncode == 0, r.stderr


def test_every_error_is_reported_with_its_location(tmp_path: Path) -> None:
    bad = {"couch": {"port": "/dev/ttyUSB0", "baudrate": -1},
           "motion": {"hold_timeout_s": 9},
           "users": [{"name": "alice", "role": "wizard"}]}
    r = _check(tmp_path, bad)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert any("couch.baudrate" in line for line in lines)
    assert any("motion.hold_timeout_s" in line for line in lines)
    assert any("users[0].role" in line for line in lines)
    assert "Traceback" not in r.stderr


def test_invalid_json_is_one_line(tmp_path: Path) -> None:
    r = _check(tmp_path, "{not json")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_couch_model_errors_are_reported(tmp_path: Path) -> None:
    bad = {**GOOD, "couch_model": {"ranges": {"lat": [5, 1]}}}
    try:
        parse_config(json.dumps(bad))
    except ConfigError as exc:
        assert any("couch_model" in p or "lat" in p for p in exc.problems)
    else:
        raise AssertionError("bad couch model accepted")


def test_duplicate_users_are_refused() -> None:
    bad = {**GOOD, "users": [{"name": "a", "role": "therapist"}, {"name": "a", "role": "viewer"}]}
    try:
        parse_config(json.dumps(bad))
    except ConfigError as exc:
        assert any("twice" in p for p in exc.problems)
    else:
        raise AssertionError("duplicate users accepted")
