"""igrtd's half of the export to record-and-verify (docs/dicom.md): after a
verified move, the registration that was applied is written as a DICOM
Spatial Registration object (REG) into the outbox, `outbox/` under the DICOM
storage directory; igrt-dicomd sends it (daemon/dicom_export.py).

Why a directory between the two processes rather than a network call from
igrtd: DICOM networking stays out of igrtd's process, whose event loop carries
the 3 ms STOP path, and a file renamed into a directory is the simplest
hand-over that survives a kill -9 of either side. igrtd writes; igrt-dicomd
only ever takes files out of it.

The write happens in a thread (asyncio.to_thread), never on the event loop,
and can never fail the caller: a REG that cannot be written is audited as
`dicom_export_not_queued` with a one-line reason (no fault, no trip: the move
is done and verified; only its record in the R&V system is missing, which the
audit says). The file is written to a temporary name, synced, checked with
the same rules igrt-dicomd will apply (imaging/dicom_instances.py), renamed
into place as `<SOPInstanceUID>.dcm` and the directory synced: igrt-dicomd
sees a complete, valid file or none.

The REG's UIDs are derived from the room and the confirmation (2.25 UUID
form, PS3.5 B.2): one verified move has one SOP Instance UID, whoever writes
it and however often, so a second write can never make a second instance of
the same correction; a file already in the outbox under that UID is kept as
it is (one UID, one content).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.audit.segments import fsync_dir
from daemon.config import RoomConfig
from daemon.proposals import Proposal

log = logging.getLogger("igrt.dicom")

OUTBOX = "outbox"
_UID_NAMESPACE = uuid.UUID("5f1f4a52-1c1e-4a5e-9a53-6f6b2d1e7a01")  # igrt's, fixed for ever


class OutboxError(Exception):
    """The REG could not be written to the outbox (one line)."""


def outbox_dir(archive_dir: Path) -> Path:
    return archive_dir / OUTBOX


def derived_uid(*parts: str) -> str:
    """A UID of the 2.25 form derived from `parts`: the same parts give the same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


@dataclass(frozen=True, slots=True)
class VerifiedRegistration:
    """A move verified at its target, and the registration it applied."""

    room: str
    proposal_id: str
    confirmation_id: str
    confirmed_by: str
    patient_id: str
    planning_frame_of_reference_uid: str
    imaging_session_uid: str
    matrix: tuple[tuple[float, ...], ...]  # ITK fixed (planning) -> moving (daily)
    verified_at: float  # UNIX time

    @property
    def sop_instance_uid(self) -> str:
        return derived_uid("igrt-reg", self.room, self.confirmation_id)

    @classmethod
    def of(cls, room: str, proposal: Proposal, confirmation_id: str, confirmed_by: str,
           verified_at: float) -> VerifiedRegistration:
        b = proposal.binding
        return cls(room, proposal.id, confirmation_id, confirmed_by, b.patient_id,
                   b.frame_of_reference_uid, b.imaging_session_uid,
                   tuple(tuple(float(v) for v in row) for row in proposal.matrix), verified_at)


@dataclass(frozen=True, slots=True)
class _Daily:
    frame_of_reference_uid: str
    study_uid: str
    stored: bool  # found in igrt-dicomd's archive (else derived from the imaging session)


def _daily_image(reg: VerifiedRegistration, archive_dir: Path) -> _Daily:
    """The daily image's frame of reference and study: from igrt-dicomd's archive when
    the imaging session names a series it holds for this patient (the DICOM path);
    else (a file-based session) UIDs derived from the imaging session, so that the
    REG still names one daily frame for one imaging session."""
    from daemon.dicom_archive import ArchiveError, DicomArchive

    try:
        archive = DicomArchive(archive_dir, read_only=True)
    except ArchiveError:
        archive = None
    if archive is not None:
        try:
            for s in archive.series(reg.patient_id):
                if s.series_uid == reg.imaging_session_uid and s.frame_of_reference_uid:
                    return _Daily(s.frame_of_reference_uid, s.study_uid, True)
        finally:
            archive.close()
    return _Daily(derived_uid("igrt-daily-frame", reg.room, reg.imaging_session_uid),
                  derived_uid("igrt-daily-study", reg.room, reg.patient_id,
                              reg.imaging_session_uid), False)


def write_to_outbox(reg: VerifiedRegistration, archive_dir: Path) -> Path:
    """Write `reg` into the outbox durably (blocking: call it in a thread); its path.
    OutboxError (one line) when it cannot be written or would not pass igrt-dicomd's
    checks."""
    # Imported here: igrtd starts without pydicom and numpy, and loads them the
    # first time a move is verified with an export peer configured.
    from imaging.dicom_instances import (
        SPATIAL_REGISTRATION,
        InstanceRefused,
        check_instance,
        is_uid,
    )
    from imaging.dicom_reg import write_registration
    from imaging.dicom_safe import DicomFileError, one_line, quiet_pydicom, read_dataset

    box = outbox_dir(archive_dir)
    uid = reg.sop_instance_uid
    if not is_uid(reg.planning_frame_of_reference_uid):
        raise OutboxError(f"REG {uid} not written: the session's frame of reference "
                          f"{one_line(reg.planning_frame_of_reference_uid, 64)!r} is not a "
                          "DICOM UID (FrameOfReferenceUID)")
    final = box / f"{uid}.dcm"
    if final.exists():
        return final  # written before: one UID, one content
    tmp = box / f".{uid}.dcm.tmp"
    try:
        box.mkdir(mode=0o750, parents=True, exist_ok=True)
        daily = _daily_image(reg, archive_dir)
        with quiet_pydicom():  # its warnings are pydicom's logging, not igrtd's
            write_registration(
                tmp, [list(row) for row in reg.matrix], patient_id=reg.patient_id,
                patient_name="",
                fixed_frame_of_reference_uid=reg.planning_frame_of_reference_uid,
                moving_frame_of_reference_uid=daily.frame_of_reference_uid,
                study_uid=daily.study_uid,
                series_uid=derived_uid("igrt-reg-series", reg.room, reg.confirmation_id),
                content_datetime=dt.datetime.fromtimestamp(reg.verified_at),
                description=(f"igrt couch correction applied and verified: proposal "
                             f"{reg.proposal_id}, confirmation {reg.confirmation_id}, "
                             f"imaging session {reg.imaging_session_uid}")[:64],
                operator=reg.confirmed_by, sop_instance_uid=uid)
        check_instance(read_dataset(tmp), SPATIAL_REGISTRATION)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(box)
    except InstanceRefused as exc:
        tmp.unlink(missing_ok=True)
        raise OutboxError(f"REG {uid} would be refused: {exc.reason}") from None
    except (OSError, ValueError, DicomFileError) as exc:
        tmp.unlink(missing_ok=True)
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutboxError(f"REG {uid} not written to {box}: {one_line(what)}") from None
    return final


Audit = Callable[..., None]


class RegistrationOutbox:
    """igrtd's outbox writer; present only when the room exports (a `dicom` section
    with a peer of role `export`)."""

    def __init__(self, archive_dir: Path, audit: Audit) -> None:
        self.archive_dir = archive_dir
        self._audit = audit

    @classmethod
    def from_config(cls, config: RoomConfig, audit: Audit) -> RegistrationOutbox | None:
        d = config.dicom
        if d is None or not d.exporters():
            return None
        return cls(d.archive_dir(config.state_dir), audit)

    async def put(self, reg: VerifiedRegistration) -> Path | None:
        """Write `reg` off the event loop and audit the outcome; never raises."""
        ids = {"proposal_id": reg.proposal_id, "confirmation_id": reg.confirmation_id,
               "sop_instance_uid": reg.sop_instance_uid}
        try:
            path = await asyncio.to_thread(write_to_outbox, reg, self.archive_dir)
        except OutboxError as exc:
            self._audit("dicom_export_not_queued", "system", reason=str(exc), **ids)
            return None
        except Exception as exc:  # noqa: BLE001 - the export must never fail supervision
            log.error("REG for record-and-verify not written: %s", exc)
            self._audit("dicom_export_not_queued", "system",
                        reason=f"unexpected {type(exc).__name__}: {str(exc)[:200]}", **ids)
            return None
        self._audit("dicom_export_queued", "system", file=str(path), **ids)
        return path
