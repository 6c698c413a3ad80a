"""Daily images that arrive by DICOM become proposals ready for review (issue 14, item 4).

While a session opened from a stored plan is open, igrtd looks in the DICOM
archive (read only; igrt-dicomd writes it) for CT series of the session's
patient that arrived after the session opened. DICOM says nothing when a
series is complete. A series counts as sent when the association that brought
its last slice was released in order (the sender had nothing more to send in
it; igrt-dicomd notes this in the index), or else when no slice of it has
arrived for `dicom.series_quiet_s`; and it is complete when, sent, its slices
make one regular volume (imaging/dicom_series.py: every slice there, no
duplicate, no tilt). Then
igrtd registers it to the plan's CT in its worker process, centred on the
plan's isocentre, and proposes the correction like `propose` would, bound to
the session's patient, plan and frame, to the series as the imaging session
and to the couch pose igrtd reads when it proposes. A person still confirms
(and approves) it: nothing here moves anything.

What is not used, and why, is audited once per series (`daily_series`):
another patient's series, a series in the plan's own frame of reference (a
planning image, not a daily one), a series that is not one volume, a
registration that did not converge. A series that grows after it was judged
is judged again.

The scan runs four times a second, only while such a session is open and the room
can take a proposal; the archive's SQLite index and the files are read in a
thread, never on the event loop. Any failure here is audited and the scan
carries on: a bad series must not take supervision down with igrtd's tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset

from daemon.api import Actor, Binding, CommandError, ImagingRequest, ProposeRequest, Role
from daemon.correction_workflow import CorrectionWorkflow, planning_ct_label
from daemon.dicom_archive import ArchiveError, DicomArchive, SeriesSummary
from daemon.proposals import TreatmentSession
from daemon.registration_worker import RegistrationFailed
from daemon.room import Room
from daemon.workflow import PROPOSABLE, RoomState
from imaging.dicom_safe import DicomFileError, read_dataset
from imaging.dicom_series import SeriesRefused, acquisition_time

log = logging.getLogger("igrt.daily")

# Proposals igrtd makes itself; a person confirms them like any other.
IGRTD = Actor(user="igrtd", role=Role.THERAPIST, via="dicom")

Judgement = Literal["wait", "ignore", "register"]

# How far ahead of igrtd's clock an imaging system's acquisition time may be.
CLOCK_SKEW_S = 60.0

# Where igrtd proposes from a daily series by itself. Not once a person has
# confirmed (CONFIRMED, AWAITING_APPROVAL): a proposal of igrtd's own would
# supersede theirs under them. A series that arrives meanwhile waits; after the
# move it is refused as acquired before the couch moved, and re-imaging follows.
AUTO_PROPOSABLE = frozenset({RoomState.READY, RoomState.PROPOSED, RoomState.DONE})
assert AUTO_PROPOSABLE <= PROPOSABLE


@dataclass(frozen=True, slots=True)
class Judged:
    what: Judgement
    reason: str = ""


def judge(series: SeriesSummary, session: TreatmentSession, now: float,
          quiet_s: float) -> Judged | None:
    """What to do with one stored series for the open session; None: not a daily
    image at all (another modality, the planning CT, or stored before the session)."""
    if series.modality != "CT" or series.series_uid == session.planning_ct_series_uid:
        return None
    if series.first_received_at < session.opened_at:
        return None
    if series.patient_id != session.patient_id:
        return Judged("ignore", f"series of patient {series.patient_id!r}; the open session is "
                                f"for {session.patient_id!r}")
    if series.frame_of_reference_uid == session.frame_of_reference_uid:
        return Judged("ignore", f"series is in the plan's frame of reference "
                                f"{session.frame_of_reference_uid}: a planning image, not a "
                                "daily one")
    sent = series.sent_at is not None and series.sent_at >= series.last_received_at
    if not sent and now - series.last_received_at < quiet_s:
        return Judged("wait")
    return Judged("register")


class DailySeriesWatch:
    def __init__(self, room: Room, corrections: CorrectionWorkflow, archive_dir: Path, *,
                 quiet_s: float, poll_s: float = 0.25) -> None:
        self.room = room
        self.corrections = corrections
        self.archive_dir = archive_dir
        self.quiet_s = quiet_s
        self.poll_s = poll_s
        self._archive: DicomArchive | None = None
        # (series UID, instance count) already judged: a series judged again only
        # when more of it arrives.
        self._judged: set[tuple[str, int]] = set()
        self._ignored: set[str] = set()  # a series' patient and frame never change
        self._last_error = ""
        # When the couch last moved under igrtd (wall clock), and whether it is moving:
        # an image acquired before that is not of the couch pose igrtd would bind.
        self._moving = False
        self._moved_at = 0.0
        room.transition_listeners.append(self._on_state)

    def _on_state(self, state: str) -> None:
        if state == "MOVING" or self._moving:
            self._moving = state == "MOVING"
            self._moved_at = time.time()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.scan_once()
            except Exception as exc:  # audited; supervision must go on
                text = f"{type(exc).__name__}: {exc}"
                if text != self._last_error:  # once per distinct failure, not every second
                    self._last_error = text
                    log.warning("daily series scan failed: %s", text, exc_info=True)
                    self.room.audit("daily_series", "system", outcome="scan failed",
                                    reason=text[:300])

    def _open(self) -> DicomArchive | None:
        if self._archive is None:
            try:
                self._archive = DicomArchive(self.archive_dir, read_only=True)
            except ArchiveError:
                return None  # nothing stored yet
        return self._archive

    def _series(self, since: float) -> list[SeriesSummary]:
        archive = self._open()
        if archive is None:
            return []
        return archive.series(since=since)

    def _usable(self, session: TreatmentSession) -> bool:
        return (self.room.session is session and session.source == "plan"
                and session.planning_ct_dir is not None
                and self.room.workflow.state in AUTO_PROPOSABLE)

    async def scan_once(self) -> None:
        session = self.room.session
        if session is None or not self._usable(session):
            return
        found = await asyncio.to_thread(self._series, session.opened_at)
        now = time.time()
        for series in found:
            key = (series.series_uid, series.instances)
            if key in self._judged or series.series_uid in self._ignored:
                continue
            judged = judge(series, session, now, self.quiet_s)
            if judged is None:
                continue
            if judged.what != "ignore" and series.series_uid not in session.imaging:
                # First sight: where the couch is now is where it was when the series
                # arrived; the proposal is checked against it (couch moved since?).
                try:
                    await self.corrections.record_imaging(
                        IGRTD, ImagingRequest(imaging_session_uid=series.series_uid,
                                              modality="CT"))
                except CommandError as exc:
                    self._judged.add(key)
                    self._note(series, "refused", f"couch pose at arrival not recorded: {exc}")
                    continue
            if judged.what == "ignore":
                self._ignored.add(series.series_uid)
                self._note(series, "ignored", judged.reason)
                continue
            if judged.what == "wait":
                continue
            self._judged.add(key)
            if not self._usable(session):
                self._judged.discard(key)  # judged when the room can take it
                return
            await self._register_and_propose(series, session)

    def _note(self, series: SeriesSummary, outcome: str, reason: str = "",
              **details: object) -> None:
        self.room.audit("daily_series", "system", series_uid=series.series_uid,
                        patient_id=series.patient_id, instances=series.instances,
                        outcome=outcome, reason=reason, **details)

    async def _register_and_propose(self, series: SeriesSummary,
                                    session: TreatmentSession) -> None:
        archive = self._open()
        assert archive is not None  # found series came from it
        try:
            await asyncio.to_thread(archive.series_geometry, series.series_uid)
            header = await asyncio.to_thread(self._header, archive, series.series_uid)
        except (SeriesRefused, ArchiveError) as exc:
            self._note(series, "refused", f"not one volume: {exc}")
            return
        acquired = acquisition_time(header)
        why = self._not_of_this_pose(acquired)
        if why:
            self._note(series, "refused", why)
            return
        assert acquired is not None
        moving = str(archive.directory / "series" / series.series_uid)
        assert session.planning_ct_dir is not None
        self._note(series, "complete", moving=moving)
        centre, half = session.registration_centre()
        # Review planes through the plan's isocentre, as for a registration asked for.
        review = self.corrections.review_request(planning_ct_label(session),
                                                 f"daily CT {series.series_uid}", session.iso)
        try:
            done = await self.corrections.registrations.register(
                session.planning_ct_dir, moving, centre, roi_half_mm=half, review=review)
        except (ValueError, RegistrationFailed) as exc:
            self._note(series, "refused", f"registration failed: {exc}")
            return
        result = done.result
        out = result.to_json_dict()
        self.room.audit("registration", IGRTD.user, fixed=session.planning_ct_dir,
                        moving=moving, converged=out.get("converged"), metric=out.get("metric"),
                        translation_mm=out.get("translation_mm"),
                        rotation_deg=out.get("rotation_deg"), seconds=out.get("seconds"),
                        via=IGRTD.via, **self.corrections.reviewed(done.review))
        if not result.converged:
            self._note(series, "refused", f"registration did not converge: {result.reason}")
            return
        if not self._usable(session):
            self._note(series, "not proposed", "the session closed or the room moved on "
                                               "while it was registered")
            return
        req = ProposeRequest(
            matrix=out["matrix"], iso=session.iso, patient_position=session.patient_position,
            binding=Binding(patient_id=session.patient_id, plan_uid=session.plan_uid,
                            frame_of_reference_uid=session.frame_of_reference_uid,
                            imaging_session_uid=series.series_uid,
                            acquired_at=acquired),
            source="dicom")
        try:
            proposal = await self.corrections.propose(IGRTD, req)
        except CommandError as exc:
            self._note(series, "refused", f"proposal refused: {exc}")
            return
        self._note(series, "proposed", proposal_id=proposal.get("id"),
                   verdict=proposal.get("verdict"))

    @staticmethod
    def _header(archive: DicomArchive, series_uid: str) -> Dataset:
        try:
            return read_dataset(archive.instance_paths(series_uid)[0], stop_before_pixels=True)
        except DicomFileError as exc:
            raise ArchiveError(str(exc)) from None

    def _not_of_this_pose(self, acquired: float | None) -> str:
        return not_of_this_pose(acquired, time.time(), moving=self._moving,
                                moved_at=self._moved_at)

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None


def not_of_this_pose(acquired: float | None, now: float, *, moving: bool,
                     moved_at: float) -> str:
    """Why an image acquired at `acquired` may not show the couch where igrtd found
    it when the series arrived; "" if it does. `moved_at`: when the couch last moved
    under igrtd (wall clock); `moving`: whether it is moving now."""
    if acquired is None:
        return ("no acquisition date and time in the series: igrtd cannot tell that the "
                "couch has not moved since; register it by hand (igrtctl reg run) and "
                "propose")
    if acquired > now + CLOCK_SKEW_S:
        return (f"acquired {acquired - now:.0f} s in the future by igrtd's clock (the "
                f"imaging system's clock is off by more than {CLOCK_SKEW_S:.0f} s)")
    # Second-resolution acquisition times are floored, so a move that ended in the
    # same second as the acquisition began is refused too: a refusal, never a miss.
    if moving:
        return "the couch is moving: the image is not of where it will stop; re-image"
    if moved_at > acquired:
        when = time.strftime("%H:%M:%S", time.localtime(moved_at))
        return (f"the couch moved (until {when}) after this image was acquired "
                f"({time.strftime('%H:%M:%S', time.localtime(acquired))}): re-image")
    return ""
