"""Daily QA in a real igrtd against the simulated couch (issue 16; daemon/qa_workflow.py).

The QA phantom's CBCTs are made here (sim.qa_phantom, sim.imager.acquire_cbct) at the
couch poses the QA moves go to, and given to igrtd as files: igrtd's registration
worker reads them, finds the BB and registers each one to the baseline. The moves
run through hold-to-run and the MotionGate like any correction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from daemon.audit import read_records
from daemon.audit.record import AuditRecord
from safety.pose import Pose
from sim.imager import acquire_cbct
from sim.qa_phantom import (
    QA_ISO_MM,
    QA_PATIENT_POSITION,
    default_pivot,
    lay_phantom,
    make_qa_phantom,
    table_top_for,
)
from sim.room import DaemonProcess, SimRoom

from .conftest import Console, executed

LAT10 = Pose(lat=10.0)


def _cbct(path: Path, couch: Pose, placement: np.ndarray, seed: int) -> str:
    """A CBCT of the QA phantom, laid at the treatment isocentre with the couch at zero,
    with the couch at `couch` (the simulated couch is perfect: reported = real)."""
    img = acquire_cbct(make_qa_phantom(), placement, couch, default_pivot(), QA_ISO_MM,
                       QA_PATIENT_POSITION, np.random.default_rng(seed),
                       table_top=table_top_for(placement))
    sitk.WriteImage(img, str(path))
    return str(path)


@pytest.fixture(scope="module")
def phantom_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("qa-images")
    placement = lay_phantom(Pose())
    return {"baseline": _cbct(d / "baseline.mha", Pose(), placement, 1),
            "lat+10": _cbct(d / "lat10.mha", LAT10, placement, 2),
            "home": _cbct(d / "home.mha", Pose(), placement, 3)}


def _move(console: Console, target: Pose) -> dict[str, Any]:
    """qa_move, then hold-to-run until the move is verified."""
    view = console.ok("qa_move", target=target.as_dict())
    assert view["status"] == "confirmed" and view["source"] == "qa", view
    holder = console.hold_in_background(view["id"])
    try:
        st = console.wait_state("DONE", "FAULT", "STOPPED", timeout=30.0)
    finally:
        holder.stop()
    assert st["state"] == "DONE", st
    assert holder.started()
    return st


def _audit(state: Path, event: str) -> list[AuditRecord]:
    return list(read_records(state / "audit", event=event))


def test_a_qa_session_moves_10_mm_lat_and_back_through_hold_to_run_and_measures_it(
        room: SimRoom, bob: Console, tmp_path: Path, phantom_images: dict[str, str]) -> None:
    started = bob.ok("qa_start", kind="daily")
    assert started["home"]["lat"] == pytest.approx(0.0, abs=0.05)
    home = Pose.from_dict(started["home"])
    base = bob.ok("qa_image", image=phantom_images["baseline"], label="baseline")
    # A perfect room: the BB is where the phantom was set up, the isocentres coincide.
    assert base["bb_mm"] == pytest.approx([4.0, -3.0, 2.5], abs=0.3)
    assert np.linalg.norm(base["iso_offset_mm"]) < 0.3

    _move(bob, home.plus(LAT10))
    assert len(executed(room, "GO")) == 1  # the move went out as one TARGET and GO
    away = bob.ok("qa_image", image=phantom_images["lat+10"], label="lat+10")
    assert away["commanded"]["lat"] == pytest.approx(10.0)
    assert away["measured"]["lat"] == pytest.approx(10.0, abs=0.3)
    for axis in ("long", "vert"):
        assert away["measured"][axis] == pytest.approx(0.0, abs=0.3)
    assert away["shift"][0] == pytest.approx(10.0, abs=0.3)

    _move(bob, home)
    back = bob.ok("qa_image", image=phantom_images["home"], label="home")
    assert back["commanded"] == {a: 0.0 for a in back["commanded"]}
    assert max(abs(v) for v in back["error"].values()) < 0.3
    assert len(executed(room, "GO")) == 2

    # Only lat + was measured: the daily result is refused as incomplete, then aborted.
    reply = bob.call("qa_finish")
    assert not reply["ok"] and "daily QA incomplete" in reply["error"]
    assert "lat -" in reply["error"]
    aborted = bob.ok("qa_finish", abort=True, reason="room test: lat only")
    assert aborted["aborted"] is True and aborted["passed"] is False
    st = bob.ok("status")
    assert st["state"] == "STANDBY" and st["session"] is None
    assert st["qa"]["session"] is None and st["qa"]["last_daily"] is None
    [stored] = bob.ok("qa_results")["results"]
    assert stored["id"] == aborted["id"] and len(stored["measurements"]) == 3

    state = tmp_path / "state"
    actions = [r.details["action"] for r in _audit(state, "qa")]
    assert actions == ["start", "image", "move", "image", "move", "image", "abort"]
    assert len(_audit(state, "verified")) == 2


def test_a_service_engineer_runs_a_qa_move_but_not_a_clinical_one(
        daemon: DaemonProcess, alice: Console) -> None:
    sam = Console(daemon.socket_path, "sam")
    sam.ok("qa_start")
    reply = alice.propose(Pose(2.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert not reply["ok"] and "QA session is open" in reply["error"]
    _move(sam, Pose(lat=5.0))
    sam.ok("qa_finish", abort=True, reason="service check of the couch only")
    alice.open_session()
    pid = alice.propose(Pose(2.0, 0.0, 0.0, 0.0, 0.0, 0.0))["result"]["id"]
    alice.ok("confirm", proposal_id=pid)
    reply = sam.call("hold", proposal_id=pid)
    assert not reply["ok"] and reply["code"] == "forbidden"


@pytest.fixture
def gated_daemon(room: SimRoom, tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(room.room_config(tmp_path / "state", qa_gate=True), tmp_path / "state",
                      tmp_path / "igrtd.log").start()
    yield d
    d.stop()


def test_the_gate_refuses_clinical_corrections_until_a_physicist_overrides(
        gated_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice = Console(gated_daemon.socket_path, "alice")
    bob = Console(gated_daemon.socket_path, "bob")
    alice.open_session()
    reply = alice.propose(Pose(2.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert not reply["ok"] and reply["code"] == "refused"
    assert reply["error"] == ("daily QA of room demo has not passed within 24 h (last pass: "
                              "none); a physicist may override for this session (qa_override)")
    assert alice.ok("status")["qa"]["clinical_allowed"] is False
    refused = alice.call("qa_override", reason="therapist wants to treat")
    assert not refused["ok"] and refused["code"] == "forbidden"
    bob.ok("qa_override", reason="QA phantom at the workshop; lasers checked by hand")
    prop = alice.propose(Pose(2.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert prop["ok"] and prop["result"]["verdict"] == "needs_confirmation"
    [override] = [r for r in _audit(tmp_path / "state", "qa")
                  if r.details["action"] == "override"]
    assert override.actor == "bob"
    assert override.details["reason"] == "QA phantom at the workshop; lasers checked by hand"
    alice.ok("close_session")
    alice.open_session()  # the next session: the override is gone
    assert not alice.propose(Pose(2.0, 0.0, 0.0, 0.0, 0.0, 0.0))["ok"]
    assert (tmp_path / "state" / "qa.sqlite").is_file()  # durable, in the room's state dir
