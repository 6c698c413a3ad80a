"""Correction between beams (issue 17, items 7-9; docs/intrafraction-monitoring.md).

Beam-on monitoring holds the beam when the target drifts beyond tolerance. When
the drift stays held longer than `monitoring.correction_after_s`, igrtd
proposes a couch correction from the tracked markers, with the beam held:

* the last `correction_window_s` of the held drift's frames are averaged and
  must have settled (safety.drift_correction: translation from one or two
  markers, rotation too from three or more);
* the drift becomes a registration of the open session and goes through
  `CorrectionWorkflow.propose` like any other (binding, planner, limits,
  verdict tiers, collision path, daily-QA gate, audit). MONITORING -> PROPOSED;
  a refused or within-tolerance one leaves the room monitoring, beam held;
* the frames go on being judged while the proposal waits for its
  confirmation and approval. A target back within tolerance long enough to
  release the beam withdraws the proposal first (PROPOSED or
  AWAITING_APPROVAL -> MONITORING), then releases;
* confirmed, frames are no longer used (the couch is about to move the
  target); the beam cannot be released, and the MotionGate moves the couch
  only while the room PLC reports the beam held (safety.motion);
* after the move is verified (DONE), monitoring resumes (-> MONITORING) on the
  same planned target, in a new segment that starts held: the beam is
  released only after a fresh in-tolerance run;
* leaving that path any other way (STOP, fault, interlock, reset) ends the
  monitoring run with the beam held.

One proposal per held drift: a refused one is not retried until the target
has been seen within tolerance again.
"""

from __future__ import annotations

import logging
import time

from daemon.api import Actor, Binding, CommandError, ProposeRequest, Role
from daemon.jsontypes import JsonObject, as_object
from daemon.monitoring import ReleaseDeferred
from daemon.monitoring_run import MonitoringRun
from daemon.ports import Proposer
from daemon.room import Room
from daemon.workflow import RoomState
from imaging.tracking import KvFrame, TargetEstimate
from safety.beam_hold import Decision
from safety.drift_correction import drift_correction

log = logging.getLogger("igrt.room")

S = RoomState

BETWEEN_BEAMS_SOURCE = "between_beams"
# igrtd itself proposes; people confirm and approve it.
MONITOR_ACTOR = Actor(user="monitor", role=Role.THERAPIST, via="igrtd")
# States in which a pending correction may still be withdrawn (not yet confirmed).
WITHDRAWABLE = frozenset({S.PROPOSED, S.AWAITING_APPROVAL})
# The couch moves the target: frames are not used. (In CONFIRMED they still are: the
# MotionGate asks `refusal()` whether the correction still fits what they show.)
PAUSED_STATES = frozenset({S.MOVING, S.VERIFYING})
# A correction needs this many estimates since its proposal before they can say the
# target moved (one noisy estimate must not withdraw it).
MIN_ESTIMATES_TO_JUDGE = 3


class ReleaseRefused(ReleaseDeferred):
    """The beam may not be released now (daemon.monitoring keeps it held and retries)."""


def _tracked_target(run: MonitoringRun,
                    markers: tuple[tuple[float, float, float], ...]) -> tuple[float, float, float]:
    """The target as the tracker places it: the plan's, moved by the markers' mean shift."""
    n = len(markers)
    x, y, z = (run.target_mm[i] + sum(m[i] - p[i] for m, p in zip(markers, run.markers_mm)) / n
               for i in range(3))
    return (x, y, z)


class BetweenBeams:
    def __init__(self, room: Room, proposer: Proposer | None = None) -> None:
        self.room = room
        self.proposer = proposer

    # -- every frame (IntrafractionMonitor's on_estimate) ------------------
    def observe(self, run: MonitoringRun, frame: KvFrame, estimate: TargetEstimate,
                decision: Decision) -> None:
        cfg = self.room.config.monitoring
        b = run.between
        if cfg is None or cfg.correction_after_s is None or self.proposer is None:
            return  # not configured: the beam is only held
        if b.paused or not run.active:
            return
        if b.correction_id is not None:
            self._watch_pending(run, frame.t_acquired, estimate)
            return
        if b.proposing or self.room.workflow.state != S.MONITORING:
            return
        pos = estimate.position_mm
        beyond = pos is not None and decision.hold and run.policy.exceeds(
            [float(pos[i]) - run.target_mm[i] for i in range(3)]) is not None
        if not beyond or not estimate.markers_mm:
            b.forget_drift()  # back in tolerance, or no estimate: a new drift starts afresh
            return
        if b.episode_done:
            return
        t = frame.t_acquired
        if b.drift_since is None:
            b.drift_since = t
        b.window.append((t, estimate.markers_mm))
        while b.window and b.window[0][0] < t - cfg.correction_window_s:
            b.window.pop(0)
        if t - b.drift_since < cfg.correction_after_s:
            return
        session = self.room.session
        if session is None:
            return
        try:
            dc = drift_correction(run.markers_mm, run.target_mm, [m for _, m in b.window],
                                  session.iso, session.patient_position,
                                  max_spread_mm=cfg.correction_max_spread_mm)
        except ValueError as exc:
            if b.deferred_reason is None:  # audited once per drift, then waited out
                self.room.audit("between_beams", MONITOR_ACTOR.user, action="deferred",
                                reason=str(exc))
            b.deferred_reason = str(exc)
            return
        b.episode_done, b.proposing, b.deferred_reason = True, True, None
        acquired_at = time.time() - (time.monotonic() - t)
        # The window's target estimates (as the tracker makes them) are the evidence the
        # correction stands on: later estimates are compared with their mean.
        evidence = [(tw, _tracked_target(run, markers)) for tw, markers in b.window]
        self.room.spawn(self._propose(run, as_object(dc.view(), "drift"), dc.matrix.tolist(),
                                      acquired_at, evidence))

    def _watch_pending(self, run: MonitoringRun, t: float, estimate: TargetEstimate) -> None:
        """A correction waits: keep the estimates since it was proposed, and withdraw it
        while it may be if they show the target somewhere else (it would be re-proposed
        from them once settled)."""
        cfg = self.room.config.monitoring
        b = run.between
        pos = estimate.position_mm
        if cfg is None or pos is None:
            return
        b.recent.append((t, (float(pos[0]), float(pos[1]), float(pos[2]))))
        while b.recent and b.recent[0][0] < t - cfg.correction_window_s:
            b.recent.pop(0)
        moved = b.moved_mm() if len(b.recent) >= MIN_ESTIMATES_TO_JUDGE else None
        if moved is None or moved <= cfg.correction_max_spread_mm:
            return
        self._withdraw(run, f"the target moved {moved:.2f} mm since the correction was "
                            f"proposed (limit {cfg.correction_max_spread_mm:g} mm)")

    def discard(self, run: MonitoringRun, reason: str, actor: str = MONITOR_ACTOR.user,
                **audit: object) -> str | None:
        """Supersede the pending correction while it is the current proposal (audited,
        recorded as withdrawn); its id, or None when there was none to withdraw."""
        pid = run.between.correction_id
        current = self.room.current
        if pid is None or current is None or current.id != pid:
            return None
        self.room.supersede_current(f"withdrawn: {reason}")
        run.between.correction_done("withdrawn", reason=reason)
        self.room.audit("between_beams", actor, action="withdrawn", proposal_id=pid,
                        reason=reason, **audit)
        return pid

    def refusal(self, run: MonitoringRun | None) -> str | None:
        """For the MotionGate: why the pending correction may not move now."""
        cfg = self.room.config.monitoring
        if run is None or cfg is None or run.between.correction_id is None:
            return None
        b = run.between
        pid = b.correction_id
        if not b.recent:
            return (f"between-beam correction {pid}: no target estimate since it was proposed; "
                    "nothing moves on a drift not seen again")
        age = time.monotonic() - b.recent[-1][0]
        limit = cfg.correction_window_s + cfg.max_image_age_s
        if age > limit:
            return (f"between-beam correction {pid}: the last target estimate is {age:.2f} s "
                    f"old (limit {limit:g} s)")
        moved = b.moved_mm()
        if moved is not None and moved > cfg.correction_max_spread_mm:
            return (f"between-beam correction {pid}: the target moved {moved:.2f} mm since it "
                    f"was proposed (limit {cfg.correction_max_spread_mm:g} mm)")
        return None

    async def _propose(self, run: MonitoringRun, drift: JsonObject,
                       matrix: list[list[float]], acquired_at: float,
                       evidence: list[tuple[float, tuple[float, float, float]]]) -> None:
        b = run.between
        try:
            session = self.room.session
            if session is None or self.proposer is None:
                return
            uid = f"kv-drift-{int(run.started_at)}-{len(b.history) + 1}"
            req = ProposeRequest(
                matrix=matrix, iso=session.iso, patient_position=session.patient_position,
                binding=Binding(patient_id=session.patient_id, plan_uid=session.plan_uid,
                                frame_of_reference_uid=session.frame_of_reference_uid,
                                imaging_session_uid=uid, acquired_at=acquired_at),
                source=BETWEEN_BEAMS_SOURCE)
            self.room.audit("between_beams", MONITOR_ACTOR.user, action="propose", drift=drift,
                            imaging_session_uid=uid)
            entry: JsonObject = {"imaging_session_uid": uid, "drift": drift}
            try:
                reply = await self.proposer.propose(MONITOR_ACTOR, req, between_beams=True)
            except CommandError as exc:
                entry.update(outcome="refused", reason=str(exc))
            else:
                pid = str(reply.get("id"))
                entry.update(proposal_id=pid, verdict=reply.get("verdict"),
                             outcome=str(reply.get("status")))
                current = self.room.current
                if run.active and current is not None and current.id == pid and \
                        self.room.workflow.state == S.PROPOSED:
                    n = len(evidence)
                    b.correction_id = pid
                    b.proposed_target = (sum(p[0] for _, p in evidence) / n,
                                         sum(p[1] for _, p in evidence) / n,
                                         sum(p[2] for _, p in evidence) / n)
                    b.recent[:] = evidence
                    entry["outcome"] = "proposed"
            b.history.append(entry)
            if entry["outcome"] != "proposed":
                self.room.audit("between_beams", MONITOR_ACTOR.user, action="not_proposed",
                                **{k: v for k, v in entry.items() if k != "drift"})
        except Exception:  # a bug here leaves the beam held and the room monitoring
            log.exception("between-beam proposal failed")
        finally:
            b.proposing = False

    # -- the monitor wants to release the beam ------------------------------
    def before_release(self, run: MonitoringRun) -> None:
        """Withdraw a correction that is no longer needed; ReleaseRefused while the
        release must wait (a proposal being made, or a confirmed correction)."""
        b = run.between
        if b.proposing:
            raise ReleaseRefused("a between-beam correction is being proposed")
        pid = b.correction_id
        if pid is None:
            return
        if self._withdraw(run, "target back within tolerance before the correction was "
                               "confirmed"):
            return
        raise ReleaseRefused(f"between-beam correction {pid} is under way (room "
                             f"{self.room.workflow.state}): the beam stays held until the "
                             "couch has moved")

    def _withdraw(self, run: MonitoringRun, reason: str) -> bool:
        """Withdraw the pending correction if it is not confirmed yet (room -> MONITORING)."""
        if self.room.workflow.state not in WITHDRAWABLE:
            return False
        pid = self.discard(run, reason)
        if pid is None:
            return False
        self.room.to(S.MONITORING, f"between-beam correction {pid} withdrawn: {reason}",
                     MONITOR_ACTOR.user)
        return True
