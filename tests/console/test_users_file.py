"""igrtd's `users_file`: enrolment and revocation with `igrtctl users add/remove`, without
a restart, on both front ends; a broken file keeps the last valid registry, audited once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.api import Role
from daemon.config import ConfigError, load_config
from daemon.console.keys import generate_keypair
from daemon.console.users import (
    USERS_FILE_CHECK_S,
    RegisteredUser,
    RoomUserRegistry,
    add_user,
    remove_user,
)
from daemon.control import ControlClient
from sim.room import DEMO_USERS, DaemonProcess, SimRoom

REPO = Path(__file__).resolve().parents[2]


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Config:
    def __init__(self, name: str, role: Role, public_key: dict[str, str] | None) -> None:
        self.name, self.role, self.public_key = name, role, public_key


@pytest.fixture
def pubkeys(tmp_path: Path) -> dict[str, dict[str, str]]:
    return {u: generate_keypair(tmp_path / f"{u}.key", tmp_path / f"{u}.pub.jwk")
            for u in ("alice", "carol", "dave")}


def _registry(tmp_path: Path, pubkeys: dict[str, dict[str, str]]
              ) -> tuple[RoomUserRegistry, Path, _Clock, list[tuple[str, dict[str, Any]]]]:
    users_file = tmp_path / "users.json"
    users_file.write_text('{"v": 1, "users": []}')
    clock, audit = _Clock(), []
    reg = RoomUserRegistry([_Config("alice", Role.THERAPIST, pubkeys["alice"]),
                            _Config("olga", Role.APPROVER, None)], users_file,
                           audit=lambda e, _a, d: audit.append((e, d)), clock=clock)
    return reg, users_file, clock, audit


def _role(found: RegisteredUser | None) -> Role | None:
    return None if found is None else found.role


def test_the_file_is_looked_at_no_more_than_every_half_second(
        tmp_path: Path, pubkeys: dict[str, dict[str, str]]) -> None:
    reg, users_file, clock, audit = _registry(tmp_path, pubkeys)
    assert audit[0][0] == "users.registry_loaded" and audit[0][1]["users"] == 0
    assert _role(reg.lookup("alice")) is Role.THERAPIST and reg.lookup("olga") is None
    add_user(users_file, "carol", "therapist", pubkeys["carol"])
    clock.t += USERS_FILE_CHECK_S / 2
    assert reg.lookup("carol") is None  # not looked at yet
    clock.t += USERS_FILE_CHECK_S / 2
    assert _role(reg.lookup("carol")) is Role.THERAPIST
    assert _role(reg.lookup("alice")) is Role.THERAPIST  # the config's users stay
    assert audit[-1] == ("users.registry_reloaded", {
        "file": str(users_file), "users": 1, "added": ["carol"], "removed": [], "changed": []})
    add_user(users_file, "carol", "approver", pubkeys["carol"], replace=True)
    clock.t += USERS_FILE_CHECK_S
    assert _role(reg.lookup("carol")) is Role.APPROVER
    assert audit[-1][1]["changed"] == ["carol"]
    remove_user(users_file, "carol")
    clock.t += USERS_FILE_CHECK_S
    assert reg.lookup("carol") is None
    assert audit[-1][1]["removed"] == ["carol"]
    n = len(audit)
    for _ in range(5):  # unchanged: no re-read, nothing audited
        clock.t += USERS_FILE_CHECK_S
        reg.lookup("alice")
    assert len(audit) == n


def test_a_broken_file_keeps_the_last_valid_registry_and_is_audited_once(
        tmp_path: Path, pubkeys: dict[str, dict[str, str]]) -> None:
    reg, users_file, clock, audit = _registry(tmp_path, pubkeys)
    add_user(users_file, "carol", "therapist", pubkeys["carol"])
    clock.t += USERS_FILE_CHECK_S
    assert reg.lookup("carol") is not None
    for broken, expect in (
        ('{"v": 1, "users": [', "invalid user registry"),  # a half-written hand edit
        ('{"v": 1, "users": [{"user": "dave", "role": "god", "public_key": {}}]}', "invalid"),
        (json.dumps({"v": 1, "users": [{"user": "alice", "role": "approver",
                                        "public_key": pubkeys["dave"]}]}),
         "'alice' also in the room config's users"),
        (json.dumps({"v": 1, "users": [{"user": "olga", "role": "therapist",
                                        "public_key": pubkeys["dave"]}]}),
         "'olga' also in the room config's users"),
        (None, "cannot read user registry"),  # deleted
    ):
        if broken is None:
            users_file.unlink()
        else:
            users_file.write_text(broken)
        clock.t += USERS_FILE_CHECK_S
        assert reg.lookup("carol") is not None, broken  # the last valid registry
        assert reg.lookup("dave") is None
        assert _role(reg.lookup("alice")) is Role.THERAPIST  # never the file's alice
        event, details = audit[-1]
        assert event == "users.registry_refused" and expect in details["error"], details
        assert details["kept"] == ["carol"] and "\n" not in details["error"]
        n = len(audit)
        clock.t += 3 * USERS_FILE_CHECK_S
        reg.lookup("carol")
        assert len(audit) == n  # once per change
    users_file.write_text(json.dumps({"v": 1, "users": []}))
    clock.t += USERS_FILE_CHECK_S
    assert reg.lookup("carol") is None  # the fixed file counts at once
    assert audit[-1][0] == "users.registry_reloaded" and audit[-1][1]["removed"] == ["carol"]


def _room_config(tmp_path: Path, users_file: Path) -> Path:
    cfg = tmp_path / "room.json"
    cfg.write_text(json.dumps({
        "room": "tr1", "state_dir": str(tmp_path / "state"), "couch": {"port": "/dev/null"},
        "users": [{"name": "alice", "role": "therapist"}], "users_file": str(users_file)}))
    return cfg


@pytest.mark.parametrize(("content", "expect"), [
    (None, "users_file: cannot read user registry"),
    ("{", "users_file: invalid user registry"),
    ("ALICE", "users_file: user registry"),
])
def test_check_config_refuses_a_bad_users_file_in_one_line(
        tmp_path: Path, pubkeys: dict[str, dict[str, str]], content: str | None,
        expect: str) -> None:
    users_file = tmp_path / "users.json"
    if content == "ALICE":  # a name of the room config in the file too
        add_user(users_file, "alice", "approver", pubkeys["alice"])
    elif content is not None:
        users_file.write_text(content)
    cfg = _room_config(tmp_path, users_file)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert expect in str(err.value)
    r = subprocess.run([sys.executable, "-m", "daemon.main", "--check-config", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    problems = [line for line in r.stderr.splitlines() if "users_file" in line]
    assert len(problems) == 1, r.stderr


# ------------------------------------------------------------ igrtd, running
def _igrtctl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "daemon.igrtctl.main", *args], cwd=REPO,
                   check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def igrtd_with_users_file(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path, Any]]:
    from sim.broker import running_mosquitto

    users_file = tmp_path / "users.json"
    users_file.write_text('{"v": 1, "users": []}')
    with SimRoom() as room, running_mosquitto(tmp_path) as broker:
        pw = tmp_path / "igrtd.mqtt.pw"
        pw.write_text(broker.creds["igrtd"])
        cfg = room.room_config(tmp_path / "state", users=DEMO_USERS, users_file=str(users_file),
                               mqtt={"host": broker.host, "port": broker.port,
                                     "username": "igrtd", "password_file": str(pw)})
        d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
        try:
            yield d, users_file, broker
        finally:
            d.stop()


def _local_stop(d: DaemonProcess, key: Path) -> dict[str, Any]:
    with ControlClient(d.socket_path, "carol", key=key, room="demo") as c:
        return c.call("stop", reason="users_file test")  # signed: stop is not read-only


async def _mqtt_status(broker: Any, key: Path) -> dict[str, Any]:
    from daemon.console.client import ConsoleClient

    async with ConsoleClient(f"mqtt://{broker.host}:{broker.port}", "demo", "carol", key,
                             console_id="console1", password=broker.creds["console1"],
                             timeout_s=5) as c:
        return await c.call("status")


def _audited(d: DaemonProcess, event: str) -> list[dict[str, Any]]:
    from daemon.audit import read_records

    return [r.details for r in read_records(d.state_dir / "audit") if r.event == event]


async def test_enrolment_and_revocation_act_on_the_running_igrtd_on_both_front_ends(
        tmp_path: Path, igrtd_with_users_file: tuple[DaemonProcess, Path, Any]) -> None:
    d, users_file, broker = igrtd_with_users_file
    key = tmp_path / "carol.key"
    _igrtctl("keygen", "--out", str(tmp_path / "carol"))
    refused = _local_stop(d, key)
    assert refused["code"] == "unknown_user", refused
    _igrtctl("users", "add", "--registry", str(users_file), "--user", "carol",
             "--role", "therapist", "--public-key", str(tmp_path / "carol.pub.jwk"))
    enrolled = time.monotonic()
    while not (reply := _local_stop(d, key))["ok"]:
        assert reply["code"] == "unknown_user", reply
        assert time.monotonic() - enrolled < 1.0, "not accepted within 1 s of the enrolment"
        await asyncio.sleep(0.05)
    status = await _mqtt_status(broker, key)  # the MQTT front end knows carol too
    assert status["ok"], status

    _igrtctl("users", "remove", "--registry", str(users_file), "--user", "carol")
    await asyncio.sleep(USERS_FILE_CHECK_S)  # every command from now on is refused
    assert _local_stop(d, key)["code"] == "unknown_user"
    status = await _mqtt_status(broker, key)
    assert not status["ok"] and status["code"] == "unknown_user", status

    # Re-enrolled, then the file is broken by a hand edit: carol stays, audited once.
    _igrtctl("users", "add", "--registry", str(users_file), "--user", "carol",
             "--role", "therapist", "--public-key", str(tmp_path / "carol.pub.jwk"))
    await asyncio.sleep(USERS_FILE_CHECK_S)
    assert _local_stop(d, key)["ok"]
    users_file.write_text('{"v": 1, "users": [{"user": "carol"')
    await asyncio.sleep(USERS_FILE_CHECK_S)
    for _ in range(3):
        assert _local_stop(d, key)["ok"]
        assert (await _mqtt_status(broker, key))["ok"]
        await asyncio.sleep(USERS_FILE_CHECK_S)
    refusals = _audited(d, "users.registry_refused")
    assert len(refusals) == 1, refusals
    assert "invalid user registry" in refusals[0]["error"] and refusals[0]["kept"] == ["carol"]
    reloads = _audited(d, "users.registry_reloaded")
    assert [r["added"] for r in reloads] == [["carol"], [], ["carol"]]
    assert [r["removed"] for r in reloads] == [[], ["carol"], []]


def test_igrtctl_keeps_the_files_mode_owner_and_group(
        tmp_path: Path, pubkeys: dict[str, dict[str, str]]) -> None:
    """igrtd (account igrt) must still read the file root rewrote."""
    import os
    import stat

    users_file = tmp_path / "users.json"
    add_user(users_file, "carol", "therapist", pubkeys["carol"])
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o640  # a first file
    assert users_file.stat().st_gid == tmp_path.stat().st_gid
    users_file.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(users_file, 4242, 4243)
    add_user(users_file, "dave", "approver", pubkeys["dave"])
    remove_user(users_file, "carol")
    st = users_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4242, 4243)
