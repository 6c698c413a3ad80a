"""Beam-on intrafraction monitoring in igrtd (docs/intrafraction-monitoring.md, "In igrtd").

MONITORING is beam-on. kV frames arrive over the imager link
(daemon/imager_link.py); an IntrafractionMonitor (daemon/monitoring.py) turns
each into a beam-hold decision written to the room PLC first, then audited
(the audit fans out to consoles). Fail safe: losing the imager link holds the
beam at once; losing the PLC link is a FAULT and the hold is written as soon
as the link is back; igrtd stopping holds the beam. Nothing moves: no motion
kind is permitted in MONITORING (safety.motion.DEFAULT_MOTION_STATES), and
`hold` is refused in it. Roles are checked by the RoomService facade.

Between beams (daemon/between_beams.py): a held drift may become a couch
correction; the run then stays alive through PROPOSED ... DONE with the beam
held, and resumes in MONITORING after the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict

from daemon.api import Actor, MonitorStartRequest, MonitorStopRequest, Reply
from daemon.between_beams import PAUSED_STATES, WITHDRAWABLE, BetweenBeams
from daemon.jsontypes import JsonObject
from daemon.monitoring import HoldEvent, IntrafractionMonitor
from daemon.monitoring_run import (
    BEAM_HOLD_RETRY_S,
    FUTURE_FRAME_TOLERANCE_S,
    MonitorFrame,
    MonitoringRun,
    geometry_problem,
    queued_frames,
    run_view,
    tightened,
)
from daemon.ports import ImagerLinkPort, Proposer
from daemon.room import Room
from daemon.workflow import RoomState
from drivers.kv_imager import WireFrame
from imaging.tracking import KvFrame, MarkerTracker, TargetEstimate
from safety.beam_hold import Decision

log = logging.getLogger("igrt.room")

S = RoomState

# States a monitoring run may be stopped in: beam-on, and a between-beam correction
# not yet confirmed. Confirmed, its move may be on its way out (the MotionGate between
# TARGET and GO): `stop` interrupts it, and that ends the run with the beam held.
STOPPABLE = frozenset({S.MONITORING, *WITHDRAWABLE})


class BeamMonitoring:
    def __init__(self, room: Room, proposer: Proposer | None = None) -> None:
        self.room = room
        self.between = BetweenBeams(room, proposer)
        room.transition_listeners.append(self._on_transition)
        self.imager: ImagerLinkPort | None = None  # attached by serve()
        self._mon: MonitoringRun | None = None
        self._mon_last: JsonObject | None = None
        self._ending_hold: asyncio.Task[None] | None = None
        # What igrtd last wrote to the beam-hold output (the PLC's echo lags a poll).
        self._beam_hold_written: bool | None = None

    def attach_imager(self, link: ImagerLinkPort) -> None:
        """serve() hands over the kV imaging link; its events come back to on_imager_*."""
        self.imager = link
        link.set_listener(self)

    async def monitor_start(self, actor: Actor, req: MonitorStartRequest) -> Reply:
        cfg = self.room.config.monitoring
        if cfg is None:
            raise self.room.refuse(actor, "monitor_start", "intrafraction monitoring is not "
                                   "configured in this room (no monitoring section)")
        if self.room.session is None:
            raise self.room.refuse(actor, "monitor_start", "no treatment session is open")
        if self.room.workflow.state not in (S.READY, S.DONE):
            raise self.room.refuse(actor, "monitor_start", f"monitoring starts from READY or DONE "
                                   f"(after positioning); room is {self.room.workflow.state}")
        if self.room.plc is None:
            raise self.room.refuse(actor, "monitor_start", "no room PLC is configured: igrtd "
                                   "cannot hold the beam")
        if self._ending_hold is not None and not self._ending_hold.done():
            raise self.room.refuse(actor, "monitor_start", "the beam hold asserted when the last "
                                   "monitoring run ended has not reached the room PLC yet")
        snap = self.room.plc.snapshot()
        if not snap.link_ok:
            raise self.room.refuse(actor, "monitor_start", f"room PLC link is down "
                                   f"({snap.link_reason}): igrtd cannot hold the beam")
        echo = snap.outputs.get("beam_hold")
        if echo is None and self._beam_hold_written is None:
            raise self.room.refuse(actor, "monitor_start", "the room PLC has not reported its "
                                   "beam-hold output yet")
        # Held if either says so; a held start is re-asserted before the first frame.
        coil = bool(echo) or bool(self._beam_hold_written)
        if self.imager is None or not self.imager.connected:
            raise self.room.refuse(actor, "monitor_start", "no kV imaging system is connected on "
                                   f"{self.room.config.imager_socket}")
        status = self.room.couch.latest_status
        if status is not None and any(status.moving):
            raise self.room.refuse(actor, "monitor_start", "the couch is moving")
        bad = [list(p) for p in [*req.markers_mm, req.target_mm]
               if not all(math.isfinite(v) for v in p)]
        if bad:
            raise self.room.refuse(actor, "monitor_start", f"marker/target positions {bad} are not "
                                   "finite numbers (mm)")
        try:
            policy = tightened(cfg.policy(), req)
            geometries = cfg.geometries()
            tracker = MarkerTracker(geometries, req.markers_mm, req.target_mm,
                                    search_radius_mm=cfg.search_radius_mm,
                                    marker_size_mm=cfg.marker_size_mm, min_cnr=cfg.min_cnr,
                                    max_ray_miss_mm=cfg.max_ray_miss_mm)
        except ValueError as exc:
            raise self.room.refuse(actor, "monitor_start", str(exc)) from None
        run = MonitoringRun(actor.user, policy, tracker, geometries,
                            [list(p) for p in req.markers_mm], req.target_mm,
                            self.room.workflow.state, time.time(), time.monotonic(), bool(coil))
        self._mon = run
        self.room.audit("monitoring", actor.user, action="start", markers_mm=run.markers_mm,
                        target_mm=list(run.target_mm), tolerance_mm=policy.tolerance_mm,
                        debounce_s=policy.debounce_s, release_after_s=policy.release_after_s,
                        max_image_age_s=policy.max_image_age_s, frame_rate_hz=cfg.frame_rate_hz,
                        beam_hold_at_start=bool(coil), via=actor.via)
        self.room.to(S.MONITORING, f"beam-on monitoring started by {actor.user}", actor.user)
        run.task = asyncio.get_running_loop().create_task(self._monitoring_loop(run),
                                                          name="monitoring")
        return self.view()

    def correction_refusal(self) -> str | None:
        """For the MotionGate: why a correction between beams may not move now."""
        return self.between.refusal(self._mon)

    def beam_hold_required(self) -> bool:
        """A monitoring run is alive: between beams nothing moves unless the PLC reports
        the beam held (safety.motion)."""
        return self._mon is not None

    async def monitor_stop(self, actor: Actor, req: MonitorStopRequest) -> Reply:
        run = self._mon
        if run is None or self.room.workflow.state not in STOPPABLE:
            state = self.room.workflow.state
            raise self.room.refuse(actor, "monitor_stop", f"monitoring is not running (room is "
                                   f"{state})" if run is None else f"the room is {state}: a "
                                   "between-beam correction is confirmed or moving the couch; "
                                   "stop it first (stop), which ends monitoring with the beam "
                                   "held")
        # A waiting correction is withdrawn before anything is awaited: nobody can confirm
        # it while monitoring winds down.
        self.between.discard(run, f"monitoring stopped by {actor.user}", actor.user,
                             via=actor.via)
        await self._end_monitoring(run, f"stopped by {actor.user}")
        release_error = None
        if req.release_hold and run.coil_held is not False:
            try:
                await self._write_beam_hold(False)
            except Exception as exc:  # noqa: BLE001 - reported, the hold stays
                release_error = f"beam hold not released: {exc}"
                self.room.audit("beam_hold_write_failed", actor.user, hold=False, error=str(exc))
            else:
                run.coil_held = False
                t = time.monotonic()
                run.events.append(HoldEvent("beam_release", "operator", f"released by "
                                            f"{actor.user} at monitor_stop", None, None, t, t,
                                            None))
                self.room.audit("beam_release", actor.user, cause="operator",
                                reason="released at the end of monitoring by the operator",
                                via=actor.via)
        self.room.audit("monitoring", actor.user, action="stop", beam_held=run.coil_held,
                        frames=len(run.records),
                        holds=sum(e.event == "beam_hold" for e in run.events),
                        via=actor.via)
        self._mon = None
        self._mon_last = run_view(run)
        back = run.return_state if self.room.workflow.can(run.return_state) else S.READY
        if self.room.workflow.can(back):  # (a fault while monitoring wound down stays)
            self.room.to(back, f"beam-on monitoring ended by {actor.user}"
                         + ("; beam hold left asserted" if run.coil_held is not False else ""),
                         actor.user)
        out = dict(self._mon_last)
        if release_error:
            out["release_error"] = release_error
        if req.include_records:
            out["records"] = [asdict(r) for r in run.records]
            out["events"] = [asdict(e) for e in run.events]
        return out

    async def monitor_status(self, actor: Actor) -> Reply:
        return self.view()

    async def shutdown(self) -> None:
        """igrtd is stopping: end monitoring with the beam held (fail safe)."""
        run = self._mon
        if run is None:
            return
        await self._end_monitoring(run, "igrtd stopping")
        try:
            async with asyncio.timeout(1.0):
                await self._write_beam_hold(True)
        except Exception as exc:  # noqa: BLE001 - the PLC must hold on host loss itself
            log.error("beam hold at shutdown not written: %s", exc)
            self.room.audit("beam_hold_write_failed", "system", hold=True, error=str(exc))
            return
        if run.coil_held is not True:
            self.room.audit("beam_hold", "monitor", cause="daemon_stopping",
                            reason="igrtd stopping during beam-on monitoring", frame_id=None)
        run.coil_held = True

    # -- imager link events (daemon.imager_link.ImagerListener) ------------
    def on_imager_frame(self, frame: WireFrame, received_mono: float,
                        received_unix: float) -> None:
        run = self._mon
        if run is None or run.frames is None:
            return  # not monitoring: frames are not used
        # The imaging system stamps UNIX time; the monitor times by the monotonic clock.
        t_acq = received_mono - (received_unix - frame.acquired_at)
        if t_acq > received_mono + FUTURE_FRAME_TOLERANCE_S:
            run.frames_refused += 1
            reason = (f"frame {frame.frame_id} acquired {t_acq - received_mono:.3f} s in the "
                      "future: the imaging system's clock is ahead of igrtd's")
            if run.frames_refused == 1 or run.frames_refused % 100 == 0:
                log.error("kV frame refused: %s", reason)
                self.room.audit("imager_frame_rejected", "system", error=reason,
                                refused=run.frames_refused)
            return
        problem = geometry_problem(run, frame)
        run.frames.put_nowait(MonitorFrame(frame.frame_id, t_acq, frame.images, problem))

    def on_imager_connection(self, connected: bool, detail: str) -> None:
        self.room.audit("imager_link", "system", connected=connected, detail=detail,
                        state=str(self.room.workflow.state))
        run = self._mon
        if run is not None:
            if not connected and run.frames is not None:
                run.frames.put_nowait(None)  # ends the segment; the loop holds the beam
            run.wake.set()
        self.room.publish_state()

    def on_imager_rejected(self, error: str) -> None:
        self.room.audit("imager_frame_rejected", "system", error=error,
                        state=str(self.room.workflow.state))

    # -- internals ----------------------------------------------------------
    async def _write_beam_hold(self, hold: bool) -> None:
        if self.room.plc is None:
            raise RuntimeError("no room PLC configured")
        self._beam_hold_written = None  # unknown until the PLC acknowledges
        await self.room.plc.set_beam_hold(hold)
        self._beam_hold_written = hold

    def _monitor_estimator(self, run: MonitoringRun) -> Callable[[KvFrame], TargetEstimate]:
        tracker, max_age = run.tracker, run.policy.max_image_age_s

        def estimate(frame: KvFrame) -> TargetEstimate:
            problem = frame.problem if isinstance(frame, MonitorFrame) else ""
            if problem:
                return TargetEstimate(None, problem)
            age = time.monotonic() - frame.t_acquired
            if age > max_age:  # not worth the work: the stale rule decides
                return TargetEstimate(None, f"frame {frame.frame_id} acquired {age:.3f} s ago "
                                            f"(maximum image age {max_age} s)")
            return tracker.estimate(frame)

        return estimate

    async def _monitoring_loop(self, run: MonitoringRun) -> None:
        try:
            while run.active:
                if run.between.paused or self.imager is None or not self.imager.connected:
                    run.wake.clear()
                    await run.wake.wait()
                    continue
                # A segment that starts held must really be held (the monitor trusts it).
                if run.coil_held is not False and not await self._assert_beam_hold(
                        run, "segment_start", "beam held at the start of a monitoring segment"):
                    continue
                await self._monitor_segment(run)
                if run.active and run.between.paused:  # a correction confirmed: no frames
                    await self.imager.stop_acquisition()
                elif run.active:  # the imager link ended the segment, not monitor_stop
                    run.imager_link_losses += 1
                    await self._assert_beam_hold(run, "imager_link_lost",
                                                 "kV imaging link lost during beam-on")
        except Exception as exc:  # a bug here must end in a held beam, not a silent task
            log.exception("intrafraction monitoring failed")
            self._monitoring_fault(run, f"intrafraction monitoring failed: {exc!r}")

    async def _monitor_segment(self, run: MonitoringRun) -> None:
        cfg = self.room.config.monitoring
        assert cfg is not None and self.imager is not None
        queue: asyncio.Queue[KvFrame | None] = asyncio.Queue()
        async def sink(hold: bool) -> None:
            if not hold:  # may withdraw a correction no longer needed, or refuse for now
                self.between.before_release(run)
            await self._write_beam_hold(hold)

        def observe(frame: KvFrame, estimate: TargetEstimate, decision: Decision) -> None:
            self.between.observe(run, frame, estimate, decision)

        monitor = IntrafractionMonitor(self._monitor_estimator(run), sink, run.policy,
                                       self.room.audit, run.target_mm, actor="monitor",
                                       on_estimate=observe)
        monitor.start(initially_held=bool(run.coil_held))
        run.monitor, run.frames = monitor, queue
        run.segments += 1
        if not self.imager.connected:  # lost before the segment could listen
            queue.put_nowait(None)
        try:
            if not await self.imager.request_acquisition(cfg.frame_rate_hz):
                queue.put_nowait(None)
            await monitor.run(queued_frames(queue))
        finally:
            run.records.extend(monitor.records)
            run.events.extend(monitor.events)
            run.frames_skipped += monitor.frames_skipped
            run.coil_held = monitor.beam_hold_acknowledged
            run.monitor = run.frames = None

    async def _assert_beam_hold(self, run: MonitoringRun, cause: str, reason: str) -> bool:
        """Write the hold, retrying while monitoring lasts; audited if it changed anything."""
        was = run.coil_held
        failing = False
        while True:
            try:
                await self._write_beam_hold(True)
                break
            except Exception as exc:  # noqa: BLE001 - audited once, retried
                run.coil_held = None
                if not failing:
                    log.error("beam hold (%s) not written: %s", cause, exc)
                    self.room.audit("beam_hold_write_failed", "monitor", hold=True, error=str(exc),
                                    cause=cause)
                    failing = True
                if not run.active:
                    return False
                await asyncio.sleep(BEAM_HOLD_RETRY_S)
        t = time.monotonic()
        run.coil_held = True
        if was is True:
            if cause != "segment_start":
                self.room.audit("monitoring", "monitor", action=cause,
                                reason=f"{reason}; beam stays held")
        else:
            run.events.append(HoldEvent("beam_hold", cause, reason, None, None, t, t, None))
            self.room.audit("beam_hold", "monitor", cause=cause, reason=reason, frame_id=None,
                            deviation_mm=None, tolerance_mm=run.policy.tolerance_mm)
        return True

    async def _end_monitoring(self, run: MonitoringRun, why: str) -> None:
        run.active = False
        run.ended = why
        if run.frames is not None:
            run.frames.put_nowait(None)
        run.wake.set()
        task = run.task
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                log.error("monitoring did not end within 5 s; cancelled")
                task.cancel()
        if self.imager is not None:
            await self.imager.stop_acquisition()

    def plc_check(self) -> None:
        """A PLC change in MONITORING: losing the link is a FAULT with the beam held."""
        run = self._mon
        if run is None or self.room.plc is None or not run.active:
            return
        snap = self.room.plc.snapshot()
        if not snap.link_ok:
            self._monitoring_fault(run, f"room PLC link lost during beam-on monitoring "
                                        f"({snap.link_reason})")

    def _monitoring_fault(self, run: MonitoringRun, reason: str) -> None:
        """End monitoring in FAULT; the hold is written as soon as the PLC takes it."""
        self._end_held(run, reason, fault=True)

    def _end_held(self, run: MonitoringRun, reason: str, *, fault: bool) -> None:
        """End the run with the beam held: in FAULT (`fault`), or where the room went."""
        if run.ended is not None:
            return
        run.active = False
        run.ended = reason
        if run.frames is not None:
            run.frames.put_nowait(None)
        run.wake.set()
        if fault:
            self.room.audit("fault", "system", what="monitoring", reason=reason)
        else:
            self.room.audit("monitoring", "monitor", action="ended", reason=reason,
                            beam_held=True)
        self._mon = None
        self._mon_last = run_view(run)
        if fault and self.room.workflow.can(S.FAULT):
            self.room.to(S.FAULT, reason)
        cause = "fault" if fault else "interrupted"
        self._ending_hold = asyncio.get_running_loop().create_task(
            self._hold_after_end(run, reason, cause), name="monitoring-ending-hold")

    async def _hold_after_end(self, run: MonitoringRun, reason: str, cause: str) -> None:
        """The run ended without monitor_stop (`cause`: a fault, or a correction between
        beams interrupted): the hold is written as soon as the PLC takes it."""
        if run.task is not None and run.task is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(run.task), 5.0)
        failing = False
        while True:
            try:
                await self._write_beam_hold(True)
                break
            except Exception as exc:  # noqa: BLE001 - retried until the PLC takes it
                if not failing:
                    self.room.audit("beam_hold_write_failed", "monitor", hold=True, error=str(exc),
                                    cause=cause)
                    failing = True
                await asyncio.sleep(0.1)
        if run.coil_held is not True:
            self.room.audit("beam_hold", "monitor", cause=cause, reason=reason, frame_id=None)
        run.coil_held = True
        self._mon_last = run_view(run)
        if self.imager is not None:
            with contextlib.suppress(Exception):  # frames are ignored without a run anyway
                await self.imager.stop_acquisition()

    # -- between beams: the room's transitions while a correction is under way --
    def _on_transition(self, state: str) -> None:
        run = self._mon
        if run is None or not run.active or run.between.correction_id is None:
            return
        b = run.between
        if state in WITHDRAWABLE:
            current = self.room.current
            if current is None or current.id != b.correction_id:
                self._end_held(run, f"between-beam correction {b.correction_id} replaced "
                               f"(room {state})", fault=False)
            elif b.paused:  # back from CONFIRMED (expired, or the move not started)
                b.paused = False
                run.wake.set()
        elif state in PAUSED_STATES:
            if not b.paused:
                b.paused = True
                if run.frames is not None:
                    run.frames.put_nowait(None)
                run.wake.set()
        elif state == S.CONFIRMED:
            pass  # frames go on; the MotionGate asks whether the correction still fits
        elif state == S.DONE:
            # After the transition to DONE has been told to everyone: resume then.
            asyncio.get_running_loop().call_soon(self._resume, run)
        elif state != S.MONITORING:
            self._end_held(run, f"between-beam correction {b.correction_id} interrupted "
                           f"(room {state})", fault=False)

    def _resume(self, run: MonitoringRun) -> None:
        b = run.between
        pid = b.correction_id
        if run is not self._mon or not run.active or pid is None:
            return
        if self.room.workflow.state != S.DONE:
            self._end_held(run, f"between-beam correction {pid}: room {self.room.workflow.state} "
                           "instead of DONE after the move", fault=False)
            return
        b.correction_done("applied")
        status = self.room.couch.latest_status
        self.room.audit("between_beams", "monitor", action="resume", proposal_id=pid,
                        couch=None if status is None else status.pose.as_dict())
        self.room.to(S.MONITORING, f"between-beam correction {pid} applied: monitoring resumes, "
                     "beam held until the target is seen within tolerance", "monitor")
        run.wake.set()

    def view(self) -> JsonObject:
        coil = None
        if self.room.plc is not None:
            coil = self.room.plc.snapshot().outputs.get("beam_hold")
        out: JsonObject = {
            "configured": self.room.config.monitoring is not None,
            "active": self._mon is not None,
            "room_state": str(self.room.workflow.state),
            "beam_hold_output": coil,
            "imager": self.imager.describe() if self.imager is not None else None,
        }
        if self._mon is not None:
            out["run"] = run_view(self._mon)
        else:
            out["last_run"] = self._mon_last
        return out

    def brief(self) -> JsonObject | None:
        if self.room.config.monitoring is None:
            return None
        run = self._mon
        m = run.monitor if run is not None else None
        return {
            "active": run is not None,
            "imager_connected": bool(self.imager is not None and self.imager.connected),
            "beam_held": (m.beam_hold_acknowledged if m is not None
                          else run.coil_held if run is not None else None),
        }
