"""Daily CT series that arrive by DICOM during a session opened from a stored plan
(issue 14, item 4): a complete one is registered by igrtd and proposed for review;
one that is not the session's, or not one volume, is audited and never used."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom.builders import PATIENT, ct_series, part10, rt_plan
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid
from support.waiting import until

from daemon.audit import read_records
from daemon.dicom_archive import DicomArchive
from imaging.dicom_instances import check_instance
from imaging.volumes import ImageIdentity, write_dicom_series
from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.policy import VerdictPolicy
from safety.pose import AXES, ROTATION_AXES, Pose
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

from .conftest import Console

FRAME = "1.2.826.0.1.3680043.8.498.79"
QUIET_S = 0.5


def _store(directory: Path, *datasets: FileDataset) -> None:
    archive = DicomArchive(directory)
    for ds in datasets:
        archive.keep(check_instance(ds, str(ds.SOPClassUID)), part10(ds), "CBCT_WS")
    archive.close()


def _store_dir(directory: Path, series_dir: Path) -> None:
    _store(directory, *(pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))))


def _daemon(room: SimRoom, tmp_path: Path, **config: Any) -> DaemonProcess:
    cfg = room.room_config(tmp_path / "state", dicom={
        "storage_dir": str(tmp_path / "dicom"), "series_quiet_s": QUIET_S}, **config)
    return DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()


def _daily_records(tmp_path: Path, outcome: str) -> list[dict[str, Any]]:
    return [r.details for r in read_records(tmp_path / "state" / "audit")
            if r.event == "daily_series" and r.details.get("outcome") == outcome]


@pytest.fixture
def small_plan_daemon(room: SimRoom, tmp_path: Path) -> Iterator[Console]:
    plan = rt_plan(isocentre=(3.0, 4.0, 5.0), frame=FRAME)
    _store(tmp_path / "dicom", *ct_series(frame=FRAME), plan)
    d = _daemon(room, tmp_path)
    alice = Console(d.socket_path, "alice")
    alice.ok("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID)
    yield alice
    d.stop()


class PhantomFraction:
    """A planning CT of the phantom with its plan stored, igrtd with the session open
    from it, and the patient lying with a set-up error."""

    def __init__(self, room: SimRoom, tmp_path: Path, **config: Any) -> None:
        from sim.imager import planning_ct
        from sim.phantom import make_phantom

        self.iso = (8.0, -12.0, 20.0)
        self.rng = np.random.default_rng(3)
        self.phantom = make_phantom(3)
        self.room, self.tmp_path = room, tmp_path
        write_dicom_series(planning_ct(self.phantom, rng=self.rng), tmp_path / "ct",
                           ImageIdentity(patient_id=PATIENT, frame_of_reference_uid=FRAME))
        plan = rt_plan(isocentre=self.iso, frame=FRAME)
        _store_dir(tmp_path / "dicom", tmp_path / "ct")
        _store(tmp_path / "dicom", plan)
        self.daemon = _daemon(room, tmp_path, **config)
        self.alice = Console(self.daemon.socket_path, "alice")
        self.alice.ok("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID)
        self.model = CouchModel.default()
        self.couch = room.couch_pose
        self.world = PatientWorld.with_setup_error(
            self.iso, "HFS", tuple(self.model.pivot),  # type: ignore[arg-type]
            self.couch.plus(Pose(4.0, -3.0, 2.0, 1.0, 0.0, 0.0)))

    def send_cbct(self, name: str, acquired_at: dt.datetime | None = None) -> str:
        from sim.imager import acquire_cbct

        w = self.world
        cbct = acquire_cbct(self.phantom, w.placement, self.room.couch_pose, w.pivot, w.iso,
                            w.patient_position, self.rng)
        daily = write_dicom_series(cbct, self.tmp_path / name, ImageIdentity(
            patient_id=PATIENT, frame_of_reference_uid=generate_uid(), acquired_at=acquired_at))
        _store_dir(self.tmp_path / "dicom", self.tmp_path / name)
        return str(daily.series_uid)

    def proposal(self) -> dict[str, Any]:
        status = until(lambda: (s := self.alice.ok("status"))["state"] == "PROPOSED" and s,
                       60, "a proposal")
        return dict(status["proposal"])


@pytest.fixture
def fraction(room: SimRoom, tmp_path: Path) -> Iterator[PhantomFraction]:
    f = PhantomFraction(room, tmp_path)
    yield f
    f.daemon.stop()


def test_a_complete_daily_series_becomes_a_proposal_bound_to_it(
        fraction: PhantomFraction, tmp_path: Path) -> None:
    series = fraction.send_cbct("cbct")
    proposal = fraction.proposal()
    assert (proposal["source"], proposal["user"]) == ("dicom", "igrtd")
    assert proposal["binding"]["imaging_session_uid"] == series
    truth = plan_correction(fraction.world.true_registration(fraction.couch), fraction.iso,
                            "HFS", fraction.couch, fraction.model, VerdictPolicy())
    for axis in AXES:
        tol = 0.2 if axis in ROTATION_AXES else 0.5
        assert abs(proposal["target"][axis] - truth.target.get(axis)) <= tol, axis
    [proposed] = _daily_records(tmp_path, "proposed")
    assert proposed["series_uid"] == series


def test_the_review_images_of_a_daily_series_are_published_for_its_proposal(
        room: SimRoom, tmp_path: Path) -> None:
    import asyncio

    import aiomqtt
    from support.mosquitto import running_mosquitto

    from daemon.console.schemas import ReviewImageMessage, ReviewMetaMessage

    async def review(broker: Any) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        async with aiomqtt.Client(broker.host, broker.port, username="console1",
                                  password=broker.creds["console1"]) as page:
            await page.subscribe("igrt/demo/review/#", qos=1)
            async with asyncio.timeout(20):
                async for m in page.messages:
                    assert isinstance(m.payload, bytes)
                    out[m.topic.value] = m.payload
                    if len(out) == 10:
                        return out
        raise AssertionError("unreachable")

    with running_mosquitto(tmp_path / "broker") as broker:
        (tmp_path / "pw").write_text(broker.creds["igrtd"])
        f = PhantomFraction(room, tmp_path, mqtt={
            "host": broker.host, "port": broker.port, "username": "igrtd",
            "password_file": str(tmp_path / "pw")})
        try:
            series = f.send_cbct("cbct")
            proposal = f.proposal()
            got = asyncio.run(review(broker))
        finally:
            f.daemon.stop()
    meta = ReviewMetaMessage.model_validate_json(got.pop("igrt/demo/review/meta"))
    # How the page knows these images are this proposal's: the same matrix.
    assert np.abs(np.array(meta.matrix) - np.array(proposal["matrix"])).max() < 1e-6
    assert meta.moving == f"daily CT {series}" and meta.iso_mm == f.iso
    for payload in got.values():
        img = ReviewImageMessage.model_validate_json(payload)
        assert img.registration_id == meta.registration_id
    [registered] = [r.details for r in read_records(tmp_path / "state" / "audit")
                    if r.event == "registration"]
    assert registered["registration_id"] == meta.registration_id


def test_a_daily_series_acquired_before_the_couch_last_moved_is_refused(
        fraction: PhantomFraction, tmp_path: Path) -> None:
    before_move = dt.datetime.now().replace(microsecond=0)
    fraction.send_cbct("cbct")
    pid = fraction.proposal()["id"]
    fraction.alice.ok("confirm", proposal_id=pid)
    Console(fraction.daemon.socket_path, "bob").ok("approve", proposal_id=pid)
    holder = fraction.alice.hold_in_background(pid)
    assert fraction.alice.wait_state("DONE", "FAULT", "STOPPED")["state"] == "DONE"
    holder.stop()
    fraction.send_cbct("late", acquired_at=before_move)
    [refused] = until(lambda: _daily_records(tmp_path, "refused"), 30, "a daily series refused", 0.1)
    assert "the couch moved" in refused["reason"] and "re-image" in refused["reason"]
    assert fraction.alice.ok("status")["state"] == "DONE"


def test_a_daily_series_with_a_missing_slice_is_refused_and_not_proposed(
        small_plan_daemon: Console, tmp_path: Path) -> None:
    daily = ct_series(frame=generate_uid())
    _store(tmp_path / "dicom", *daily[:2], *daily[3:])
    [refused] = until(lambda: _daily_records(tmp_path, "refused"), 30, "a daily series refused", 0.1)
    assert refused["series_uid"] == daily[0].SeriesInstanceUID
    assert "1 slice(s) missing" in refused["reason"]
    assert small_plan_daemon.ok("status")["state"] == "READY"


def test_another_patients_series_is_ignored_and_audited(
        small_plan_daemon: Console, tmp_path: Path) -> None:
    _store(tmp_path / "dicom", *ct_series(frame=generate_uid(), patient="PAT-OTHER"))
    [ignored] = until(lambda: _daily_records(tmp_path, "ignored"), 30, "a daily series ignored", 0.1)
    assert "patient 'PAT-OTHER'; the open session is for 'PAT-001'" in ignored["reason"]
    assert small_plan_daemon.ok("status")["state"] == "READY"


def test_a_series_in_the_plans_own_frame_is_not_taken_as_a_daily_image(
        small_plan_daemon: Console, tmp_path: Path) -> None:
    _store(tmp_path / "dicom", *ct_series(frame=FRAME))
    [ignored] = until(lambda: _daily_records(tmp_path, "ignored"), 30, "a daily series ignored", 0.1)
    assert "a planning image, not a daily one" in ignored["reason"]


def test_a_daily_series_without_an_acquisition_time_is_refused(
        small_plan_daemon: Console, tmp_path: Path) -> None:
    _store(tmp_path / "dicom", *ct_series(frame=generate_uid()))
    [refused] = until(lambda: _daily_records(tmp_path, "refused"), 30, "a daily series refused", 0.1)
    assert "no acquisition date and time" in refused["reason"]
    assert small_plan_daemon.ok("status")["state"] == "READY"


def test_dicom_status_shows_what_igrtd_made_of_a_daily_series(
        small_plan_daemon: Console, tmp_path: Path) -> None:
    import io

    from daemon.igrtctl.dicom import run_dicom

    daily = ct_series(frame=generate_uid(), patient="PAT-OTHER")
    _store(tmp_path / "dicom", *daily)
    until(lambda: _daily_records(tmp_path, "ignored"), 30, "a daily series ignored", 0.1)
    out = io.StringIO()
    assert run_dicom(["status", "--dir", str(tmp_path / "dicom"), "--igrtd-audit",
                      str(tmp_path / "state" / "audit")], out=out) == 0
    [line] = [ln for ln in out.getvalue().splitlines() if daily[0].SeriesInstanceUID in ln
              and "IGNORED" in ln]
    assert "patient 'PAT-OTHER'; the open session is for 'PAT-001'" in line
