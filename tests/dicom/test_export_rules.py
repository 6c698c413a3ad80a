"""The export queue to record-and-verify as rules, with a fake sender and a fake
clock (daemon/dicom_export.py, daemon/dicom_outbox.py): what igrtd writes is
complete and valid or absent; each instance reaches each export peer once;
failures back off; nothing foreign, changed or contradicting is ever sent."""

from __future__ import annotations

import io
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.config_dicom import DicomConfig
from daemon.dicom_archive import DicomArchive
from daemon.dicom_export import Exporter, ExportQueue, retry_delay
from daemon.dicom_outbox import (
    OutboxError,
    RegistrationOutbox,
    VerifiedRegistration,
    outbox_dir,
    write_to_outbox,
)
from daemon.igrtctl.dicom import run_dicom
from drivers.dicom_scu import StoreAnswer, StoreTarget
from imaging.dicom_instances import CT_IMAGE, check_instance
from imaging.dicom_reg import read_registration

from .builders import ct_slice, part10, rt_plan

PLANNING_FOR = "1.2.826.0.1.3680043.8.498.77"
SHIFT = ((1.0, 0.0, 0.0, 3.0), (0.0, 1.0, 0.0, -2.0), (0.0, 0.0, 1.0, 1.5), (0.0, 0.0, 0.0, 1.0))


def _reg(confirmation: str = "conf-1", **over: Any) -> VerifiedRegistration:
    fields: dict[str, Any] = {
        "room": "r1", "proposal_id": "prop-1", "confirmation_id": confirmation,
        "confirmed_by": "alice", "patient_id": "PAT-001",
        "planning_frame_of_reference_uid": PLANNING_FOR, "imaging_session_uid": "IMG-1",
        "matrix": SHIFT, "verified_at": 1_800_000_000.0}
    fields.update(over)
    return VerifiedRegistration(**fields)


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.answers: list[StoreAnswer] = []  # next answers; success when empty

    def store(self, target: StoreTarget, path: Path, sop_class_uid: str,
              transfer_syntax_uid: str) -> StoreAnswer:
        self.sent.append((target.ae_title, path.stem, path.read_bytes()))
        return self.answers.pop(0) if self.answers else StoreAnswer(0, "")


class Audit:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []

    def append(self, event: str, actor: str, **details: object) -> None:
        self.records.append((event, details))

    def of(self, event: str) -> list[dict[str, object]]:
        return [d for e, d in self.records if e == event]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _config(peers: tuple[str, ...] = ("RV",), **over: Any) -> DicomConfig:
    return DicomConfig.model_validate({
        "peers": [{"ae_title": p, "host": "127.0.0.1", "port": 104 + i, "roles": ["export"]}
                  for i, p in enumerate(peers)],
        "export_retry_initial_s": 1.0, "export_retry_max_s": 4.0, **over})


class Rig:
    def __init__(self, tmp_path: Path, config: DicomConfig | None = None) -> None:
        self.dir = tmp_path
        self.sender, self.audit, self.clock = FakeSender(), Audit(), Clock()
        self.queue = ExportQueue(tmp_path)
        self.exporter = Exporter(config or _config(), tmp_path, self.queue, self.sender,
                                 self.audit, clock=self.clock)

    def step(self, seconds: float = 0.0) -> None:
        self.clock.now += seconds
        self.exporter.step()


def test_retry_delay_doubles_from_the_initial_wait_up_to_the_maximum() -> None:
    assert [retry_delay(n, 1.0, 4.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert retry_delay(10_000, 10.0, 600.0) == 600.0


def test_the_outbox_write_is_complete_valid_and_written_once_per_move(tmp_path: Path) -> None:
    first = write_to_outbox(_reg(), tmp_path)
    content = first.read_bytes()
    again = write_to_outbox(_reg(verified_at=1_900_000_000.0), tmp_path)
    assert again == first and again.read_bytes() == content
    assert [p.name for p in outbox_dir(tmp_path).iterdir()] == [first.name]
    rec = read_registration(first)
    assert rec.patient_id == "PAT-001" and rec.fixed_frame_of_reference_uid == PLANNING_FOR
    assert [[round(v, 9) for v in row] for row in rec.matrix.tolist()] == [list(r) for r in SHIFT]
    assert first.stem == rec.sop_instance_uid == _reg().sop_instance_uid


def test_another_move_gets_another_sop_instance_uid(tmp_path: Path) -> None:
    assert write_to_outbox(_reg("conf-1"), tmp_path) != write_to_outbox(_reg("conf-2"), tmp_path)


def test_a_registration_igrt_dicomd_would_refuse_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="FrameOfReferenceUID") as err:
        write_to_outbox(_reg(planning_frame_of_reference_uid="FOR-1"), tmp_path)
    assert "\n" not in str(err.value)
    assert not list(outbox_dir(tmp_path).glob("*"))


async def test_a_reg_that_cannot_be_written_is_audited_and_never_raises(tmp_path: Path) -> None:
    audit = Audit()
    outbox = RegistrationOutbox(tmp_path, audit.append)
    assert await outbox.put(_reg(planning_frame_of_reference_uid="FOR-1")) is None
    [record] = audit.of("dicom_export_not_queued")
    assert "FrameOfReferenceUID" in str(record["reason"]) and record["proposal_id"] == "prop-1"


def test_the_daily_frame_of_reference_is_the_stored_daily_series(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    daily = ct_slice()
    archive.keep(check_instance(daily, CT_IMAGE), part10(daily), "CBCT")
    archive.close()
    path = write_to_outbox(_reg(imaging_session_uid=str(daily.SeriesInstanceUID)), tmp_path)
    rec = read_registration(path)
    assert rec.moving_frame_of_reference_uid == str(daily.FrameOfReferenceUID)
    assert rec.study_uid == str(daily.StudyInstanceUID)


def test_a_reg_is_sent_to_every_export_peer_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, _config(("RV", "RV2")))
    path = write_to_outbox(_reg(), tmp_path)
    content = path.read_bytes()
    for _ in range(3):
        rig.step(60.0)
    assert sorted((ae, uid) for ae, uid, _ in rig.sender.sent) == [
        ("RV", path.stem), ("RV2", path.stem)]
    assert all(data == content for _, _, data in rig.sender.sent)
    assert {r.shown_state for r in rig.queue.rows()} == {"sent"}
    assert not path.exists()


def test_a_failed_export_is_retried_with_back_off_until_delivered(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.sender.answers = [StoreAnswer(None, "cannot connect to RV")] * 4
    write_to_outbox(_reg(), tmp_path)
    rig.step()
    tried_at = [rig.clock.now]
    for _ in range(60):  # 0.25 s ticks over 15 s
        before = len(rig.sender.sent)
        rig.step(0.25)
        if len(rig.sender.sent) > before:
            tried_at.append(rig.clock.now)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(tried_at)]
    assert gaps == [1.0, 2.0, 4.0, 4.0]
    assert [d["next_attempt_in_s"] for d in rig.audit.of("dicom.export_failed")] == [
        1.0, 2.0, 4.0, 4.0]
    assert len(rig.audit.of("dicom.export_sent")) == 1
    assert [r.shown_state for r in rig.queue.rows()] == ["sent"]


def test_an_instance_the_peer_took_is_never_sent_again_even_when_offered_again(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write_to_outbox(_reg(), tmp_path)
    rig.step()
    write_to_outbox(_reg(), tmp_path)  # the same move's REG again: same UID, same bytes
    for _ in range(5):
        rig.step(600.0)
    assert len(rig.sender.sent) == 1
    assert rig.audit.of("dicom.export_refused") == []


def test_other_content_under_a_queued_uid_is_refused_and_never_sent(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write_to_outbox(_reg(), tmp_path)
    rig.step()
    other = write_to_outbox(_reg(verified_at=1_900_000_000.0), tmp_path)  # same UID, new bytes
    rig.step(600.0)
    assert len(rig.sender.sent) == 1
    [refused] = rig.audit.of("dicom.export_refused")
    assert "already queued with other content" in str(refused["reason"])
    assert (outbox_dir(tmp_path) / "refused" / other.name).exists()


def test_a_queued_file_changed_on_disk_is_never_sent(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.sender.answers = [StoreAnswer(None, "cannot connect to RV")]
    write_to_outbox(_reg(), tmp_path)
    rig.step()
    [row] = rig.queue.rows()
    row.path.write_bytes(row.path.read_bytes().replace(b"PAT-001", b"PAT-999"))
    for _ in range(4):
        rig.step(5.0)
    assert len(rig.sender.sent) == 1  # only the first attempt, before the change
    [row] = rig.queue.rows()
    assert row.shown_state == "failing" and "changed on disk" in str(row.last_error)


@pytest.mark.parametrize("what", ["not DICOM", "a plan", "another maker's REG", "misnamed"])
def test_a_foreign_file_in_the_outbox_is_refused_in_one_line_and_moved_aside(
        tmp_path: Path, what: str) -> None:
    rig = Rig(tmp_path)
    box = outbox_dir(tmp_path)
    box.mkdir(parents=True)
    if what == "not DICOM":
        bad = box / "x.dcm"
        bad.write_bytes(b"\x00" * 300)
    elif what == "a plan":
        plan = rt_plan()
        bad = box / f"{plan.SOPInstanceUID}.dcm"
        bad.write_bytes(part10(plan))
    else:
        path = write_to_outbox(_reg(), tmp_path)
        if what == "misnamed":
            bad = path.rename(box / "renamed.dcm")
        else:
            bad = path
            bad.write_bytes(bad.read_bytes().replace(b"igrt", b"acme"))
    rig.step()
    rig.step(1.0)
    assert rig.sender.sent == []
    [refused] = rig.audit.of("dicom.export_refused")
    assert "\n" not in str(refused["reason"]) and refused["file"] == bad.name
    assert (box / "refused" / bad.name).exists() and not bad.exists()


def test_the_queue_is_durable_across_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.sender.answers = [StoreAnswer(None, "association rejected by RV")]
    write_to_outbox(_reg(), tmp_path)
    rig.step()
    rig.queue.close()
    again = Rig(tmp_path)
    again.clock.now = rig.clock.now
    [row] = again.queue.rows()
    assert (row.shown_state, row.attempts) == ("failing", 1)
    again.step(0.5)
    assert again.sender.sent == []  # not before its back-off
    again.step(0.6)
    assert len(again.sender.sent) == 1 and again.queue.rows()[0].shown_state == "sent"


def test_dicom_status_shows_pending_sent_and_failing_exports_with_the_reason(
        tmp_path: Path) -> None:
    DicomArchive(tmp_path).close()
    rig = Rig(tmp_path)
    rig.sender.answers = [StoreAnswer(0, ""), StoreAnswer(None, "association rejected by RV "
                                                          "(permanent, called AE title not "
                                                          "recognised)")]
    write_to_outbox(_reg("conf-1"), tmp_path)
    write_to_outbox(_reg("conf-2"), tmp_path)
    rig.step()
    rig.exporter.take_outbox()
    write_to_outbox(_reg("conf-3"), tmp_path)
    rig.exporter.take_outbox()
    out, err = io.StringIO(), io.StringIO()
    assert run_dicom(["status", "--dir", str(tmp_path)], out=out, err=err) == 0, err.getvalue()
    text = out.getvalue()
    assert "exports to record-and-verify (3): 1 pending, 1 failing, 1 sent" in text
    [failing] = [ln for ln in text.splitlines() if ln.strip().startswith("FAILING")]
    assert "association rejected by RV" in failing and "1 failed attempt(s)" in failing


def test_no_export_is_attempted_for_a_peer_no_longer_configured(tmp_path: Path) -> None:
    rig = Rig(tmp_path, _config(("RV",)))
    rig.sender.answers = [StoreAnswer(None, "down")]
    write_to_outbox(_reg(), tmp_path)
    rig.step()
    rig.queue.close()
    moved = Rig(tmp_path, _config(("RV_NEW",)))
    moved.step(time.time())
    assert moved.sender.sent == []
