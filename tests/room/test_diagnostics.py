"""Service diagnostics (`igrtctl diag`) and the diagnostics bundle.

RoomService runs in-process here, on the test's event loop, with the
simulated couch controller on a pty in the same loop: the report is what the
`diag` control command returns.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon import diagnostics
from daemon.api import Actor, ProposeRequest, Role, SessionRequest
from daemon.audit import AuditLog, list_segments
from daemon.config import RoomConfig
from daemon.service import RoomService
from daemon.store import CorrectionStore
from drivers.couch import CouchClient, CouchStatus
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.couch import SimCouchController
from sim.world import PatientWorld

SECRET = "mqtt-Pa55word-d0-not-leak"
PRIVATE_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
PUBLIC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
ISO = (8.0, -12.0, 20.0)
ALICE = Actor(user="alice", role=Role.THERAPIST)


@dataclass
class Rig:
    sim: SimCouchController
    service: RoomService
    audit: AuditLog
    state: Path
    secret_file: Path


def room_config(tmp_path: Path, port: str, **extra_users: Any) -> RoomConfig:
    secret_file = tmp_path / "mqtt.password"
    secret_file.write_text(SECRET + "\n")
    users: list[dict[str, Any]] = [
        {"name": "alice", "role": "therapist",
         "public_key": {"kty": "OKP", "crv": "Ed25519", "x": PUBLIC_X}},
        {"name": "sam", "role": "service"},
    ]
    users += [{"name": n, **u} for n, u in extra_users.items()]
    return RoomConfig.model_validate({
        "room": "diagroom",
        "state_dir": str(tmp_path / "state"),
        "couch": {"port": port},
        "mqtt": {"host": "127.0.0.1", "username": "igrtd", "password_file": str(secret_file)},
        "qa": {"gate": False},  # no daily QA in this test room (the gate is tested elsewhere)
        "users": users,
    })


async def start_rig(tmp_path: Path, **extra_users: Any) -> tuple[Rig, asyncio.Task[None]]:
    sim = SimCouchController(speed_scale=4.0, seed=5)
    await sim.start()
    config = room_config(tmp_path, sim.device_path, **extra_users)
    state = config.state_dir
    audit = AuditLog(state / "audit")
    audit.open()
    store = CorrectionStore(state / "igrt.sqlite")
    couch = CouchClient(sim.device_path)
    await couch.connect()
    service = RoomService(config, couch, audit, store)
    await service.start()
    task = asyncio.create_task(service.run())
    return Rig(sim, service, audit, state, tmp_path / "mqtt.password"), task


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r, task = await start_rig(tmp_path)
    yield r
    await stop_rig(r, task)


async def stop_rig(r: Rig, task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await r.service.couch.close()
    r.service.store.close()
    r.audit.close()
    await r.sim.stop()


def _pivot() -> tuple[float, float, float]:
    p = CouchModel.default().pivot
    return (float(p[0]), float(p[1]), float(p[2]))


async def move(service: RoomService, error: Pose) -> dict[str, Any]:
    """One confirmed correction, held to run until the room leaves MOVING."""
    await service.open_session(ALICE, SessionRequest(
        patient_id="P", plan_uid="PL", frame_of_reference_uid="F", iso=ISO,
        patient_position="HFS", manual_override="typed for the test room"))
    world = PatientWorld.with_setup_error(ISO, "HFS", _pivot(), error)
    matrix = np.asarray(world.true_registration(Pose())).tolist()
    prop = await service.propose(ALICE, ProposeRequest.model_validate({
        "matrix": matrix, "iso": ISO, "patient_position": "HFS",
        "binding": {"patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F",
                    "imaging_session_uid": "I1", "acquired_at": time.time()}}))
    await service.confirm(ALICE, prop["id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        progress = await service.hold(ALICE, prop["id"])
        if progress["state"] not in ("CONFIRMED", "MOVING", "VERIFYING"):
            return progress
        await asyncio.sleep(0.05)
    raise AssertionError("move did not finish")


def bundle_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
    return out


# ------------------------------------------------------------------ the report


async def test_diag_times_twenty_couch_status_round_trips(rig: Rig) -> None:
    rt = (await diagnostics.collect(rig.service))["couch"]["round_trip"]
    assert rt["requests"] == rt["answered"] == 20 and rt["failed"] == 0
    assert 0 < rt["min_us"] <= rt["p50_us"] <= rt["p95_us"] <= rt["max_us"]


async def test_diag_summary_reads_as_one_line_per_subsystem(rig: Rig) -> None:
    lines = diagnostics.summary_lines(await diagnostics.collect(rig.service))
    text = "\n".join(lines)
    for subsystem in ("couch link", "couch controller", "PLC", "clock", "audit", "store"):
        assert subsystem in text, text


async def test_diag_reports_the_controllers_own_counters(rig: Rig) -> None:
    rig.sim.corrupt_next_received(2)  # line noise on the next two host frames
    await asyncio.sleep(0.3)
    st = (await diagnostics.collect(rig.service))["couch"]["status"]
    assert st["crc_errors"] + st["framing_errors"] >= 2
    assert st["state"] == "IDLE" and st["fault_code"] == "none"
    assert st["heartbeat_timeout_ms"] == 250
    assert st["uptime_ms"] > 0


async def test_diag_reports_axis_error_of_the_last_move(rig: Rig) -> None:
    rig.sim.overshoot(0.3)  # inside the 0.5 mm arrival deadband: a "reached" move with error
    done = await move(rig.service, Pose(2.0, -1.5, 1.5, 0.0, 0.0, 0.0))
    assert done["state"] == "DONE", done
    last = (await diagnostics.collect(rig.service))["axes"]["last_move"]
    assert last["outcome"] == "reached"
    assert 0.2 < last["max_translation_error_mm"] < 0.5
    assert set(last["error"]) == {"lat", "long", "vert", "yaw", "pitch", "roll"}


async def test_diag_reports_clock_skew_against_the_couch_uptime(rig: Rig) -> None:
    await diagnostics.collect(rig.service)
    await asyncio.sleep(0.3)
    clock = (await diagnostics.collect(rig.service))["clock"]
    assert clock["couch"]["controller_restarted"] is False
    assert clock["couch"]["host_elapsed_s"] >= 0.25
    # Same host clock underneath the simulator: only reply jitter remains.
    assert abs(clock["couch"]["skew_ms"]) < 100
    assert abs(clock["wall_minus_monotonic_ms"]) < 1000


class _StatusOnlyCouch:
    """A couch link whose STATUS replies the test writes."""

    def __init__(self, uptime_ms: int) -> None:
        self.latest_status = self._status(uptime_ms, time.monotonic())
        self.link_ok = True

    @staticmethod
    def _status(uptime_ms: int, at: float) -> CouchStatus:
        return CouchStatus("IDLE", Pose(), (False,) * 6, (False,) * 6, "none", 0, 0, 0, 0, 250,
                           uptime_ms, at)

    async def status(self, retries: int | None = None) -> Any:
        return self.latest_status


async def test_diag_notices_a_couch_controller_restart() -> None:
    couch = _StatusOnlyCouch(uptime_ms=3_600_000)
    service = type("Svc", (), {"couch": couch})()
    await diagnostics.collect(service, rtt_samples=1)
    couch.latest_status = couch._status(2_000, couch.latest_status.received_at + 5.0)
    clock = (await diagnostics.collect(service, rtt_samples=1))["clock"]
    assert clock["couch"]["controller_restarted"] is True
    assert "skew_ms" not in clock["couch"]


async def test_diag_reports_no_plc_when_none_is_configured(rig: Rig) -> None:
    assert (await diagnostics.collect(rig.service))["plc"] == {"configured": False}


@dataclass(frozen=True)
class _PlcSnap:
    link_ok: bool
    link_reason: str
    heartbeat: int
    heartbeat_age_s: float
    fault_code: int
    read_at: float


class _Plc:
    """The PLC adapter's read side, as the service sees it."""

    def snapshot(self) -> _PlcSnap:
        return _PlcSnap(True, "ok", 4711, 0.012, 0, time.monotonic())

    def open_interlocks(self, snap: _PlcSnap) -> list[str]:
        return ["door"]

    def motion_enable_pressed(self, snap: _PlcSnap) -> bool:
        return False

    def arms_state(self, snap: _PlcSnap) -> tuple[bool, bool]:
        return True, False


async def test_diag_reports_plc_link_and_heartbeat_age(rig: Rig) -> None:
    rig.service.plc = _Plc()
    plc = (await diagnostics.collect(rig.service))["plc"]
    assert plc["configured"] and plc["link_ok"] and plc["heartbeat"] == 4711
    assert plc["heartbeat_age_ms"] == 12.0
    assert plc["open_interlocks"] == ["door"]


async def test_diag_verifies_the_audit_chain_up_to_the_head(rig: Rig) -> None:
    audit = (await diagnostics.collect(rig.service))["audit"]
    assert audit["head_seq"] == rig.audit.head[0] > 0
    assert audit["verify"]["ok"] and audit["verify"]["scope"] == "full"
    assert audit["verify"]["verified_head_hash"] == rig.audit.head[1]


async def test_diag_names_the_first_tampered_audit_record(rig: Rig) -> None:
    path = list_segments(rig.state / "audit")[-1][1]
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["actor"] = "mallory"
    lines[0] = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    verdict = (await diagnostics.collect(rig.service))["audit"]["verify"]
    assert not verdict["ok"] and verdict["first_bad"] == 1


async def test_diag_counts_the_apply_once_store(rig: Rig) -> None:
    await move(rig.service, Pose(2.0, -1.5, 1.5, 0.0, 0.0, 0.0))
    store = (await diagnostics.collect(rig.service))["store"]
    assert store["counts"]["proposals"] == 1 and store["counts"]["confirmations"] == 1
    assert store["moves_by_state"] == {"completed": 1} and store["moves_in_flight"] == 0


async def test_diag_stops_probing_a_silent_couch_after_three_failures(rig: Rig) -> None:
    rig.sim.silence_link(5.0)
    rt = (await diagnostics.collect(rig.service))["couch"]["round_trip"]
    assert rt["answered"] == 0 and rt["failed"] == 3
    assert "did not answer" in rt["last_failure"]


async def test_diag_commands_no_motion(rig: Rig) -> None:
    before = list(rig.sim.executed_commands)
    await diagnostics.collect(rig.service)
    assert rig.sim.executed_commands == before


# ------------------------------------------------------------------ the bundle


async def test_bundle_holds_report_config_audit_store_and_log(rig: Rig, tmp_path: Path) -> None:
    logging.getLogger("igrt.room").warning("a line for the bundle")
    report = await diagnostics.collect(rig.service)
    out = diagnostics.write_bundle(rig.service, tmp_path / "diag.tar.gz", report)
    members = bundle_members((tmp_path / "diag.tar.gz").read_bytes())
    assert {"diag.json", "config.json", "audit-tail.jsonl", "store.json",
            "logs/igrtd-recent.log", "MANIFEST.json"} <= set(members)
    assert json.loads(members["diag.json"])["room"] == "diagroom"
    audit_tail = [json.loads(x) for x in members["audit-tail.jsonl"].splitlines()]
    assert audit_tail[-1]["seq"] == rig.audit.head[0]
    assert b"a line for the bundle" in members["logs/igrtd-recent.log"]
    assert out["sha256"] and (tmp_path / "diag.tar.gz").stat().st_mode & 0o077 == 0


async def test_bundle_contains_no_secret(rig: Rig, tmp_path: Path) -> None:
    # Even a secret that reached the log is scrubbed.
    logging.getLogger("igrt.console").warning("broker login with %s", SECRET)
    report = await diagnostics.collect(rig.service)
    diagnostics.write_bundle(rig.service, tmp_path / "diag.tar.gz", report)
    members = bundle_members((tmp_path / "diag.tar.gz").read_bytes())
    everything = b"".join(members.values())
    assert SECRET.encode() not in everything
    config = json.loads(members["config.json"])
    assert config["mqtt"]["password_file"] == "<redacted>"
    assert config["users"][0]["public_key"]["x"] == PUBLIC_X  # public keys are fine


async def test_bundle_does_not_copy_a_private_key_configured_as_public(
        tmp_path: Path) -> None:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": PUBLIC_X, "d": PRIVATE_D}
    r, task = await start_rig(tmp_path, bob={"role": "approver", "public_key": jwk})
    try:
        out = diagnostics.write_bundle(r.service, tmp_path / "diag.tar.gz")
        members = bundle_members((tmp_path / "diag.tar.gz").read_bytes())
        assert PRIVATE_D.encode() not in b"".join(members.values())
        assert any("private key" in w for w in out["warnings"])
    finally:
        await stop_rig(r, task)


async def test_diag_command_bundle_is_saved_by_the_client(rig: Rig, tmp_path: Path) -> None:
    result = await diagnostics.diag_command(rig.service, bundle=True)
    json.dumps(result)  # the reply travels as JSON
    saved = diagnostics.save_bundle_reply(result, tmp_path / "b.tar.gz")
    assert "diag.json" in bundle_members((tmp_path / "b.tar.gz").read_bytes())
    assert saved["sha256"] == result["bundle"]["sha256"]


def test_a_bundle_damaged_in_transit_is_refused(tmp_path: Path) -> None:
    damaged = {"bundle": {"tar_gz_b64": base64.b64encode(b"not it").decode(), "sha256": "0"}}
    with pytest.raises(ValueError, match="damaged"):
        diagnostics.save_bundle_reply(damaged, tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()


def test_redaction_keeps_public_keys_and_hides_secret_names() -> None:
    warnings: list[str] = []
    out = diagnostics.redact({"mqtt": {"password_file": "/etc/igrt/pw", "api_token": "t"},
                              "public_key": {"x": "pub"}, "secret": None}, warnings)
    assert out == {"mqtt": {"password_file": "<redacted>", "api_token": "<redacted>"},
                   "public_key": {"x": "pub"}, "secret": None}
    assert warnings == []
