"""Intrafraction monitoring: kV frames in, beam hold out (docs/intrafraction-monitoring.md).

While the beam is on, every kV frame is turned into a target estimate
(`estimate`, run in a worker thread so the event loop and the interlock
supervision never wait for image work), the deviation from the planned target
position goes through the pure beam-hold state machine
(safety.beam_hold.BeamHoldMonitor), and a change is written to the room PLC's
beam-hold coil *first*; only then is it audited and published.

Latency rules:
* only the newest frame is processed; frames that arrive while an estimate
  runs replace each other (counted in `frames_skipped`), so a slow estimate
  never builds a queue of stale images;
* a watchdog evaluates the stale-image rule at its deadline, so a stopped
  image stream holds the beam even though no frame arrives to trigger it;
* a failed beam-hold write is audited and retried until it succeeds or the
  wanted state changes.

The monitor has no couch. With couch tracking configured it only hands a
bounded `CouchTrackingSuggestion` to `on_tracking_suggestion`; the daemon must
send it through its MotionGate (same interlocks, confirmation rules) or drop it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from daemon.jsontypes import JsonObject
from imaging.tracking import KvFrame, TargetEstimate
from safety.beam_hold import (
    BeamHoldMonitor,
    BeamHoldPolicy,
    CouchTrackingLimits,
    CouchTrackingRefusal,
    CouchTrackingSuggestion,
    Decision,
    suggest_couch_correction,
)

log = logging.getLogger(__name__)

Audit = Callable[..., None]  # audit(event, actor, **details)
Estimator = Callable[[KvFrame], TargetEstimate]
BeamHoldSink = Callable[[bool], Awaitable[None]]


class ReleaseDeferred(Exception):
    """Raised by a beam-hold sink asked to release when the beam must stay held for now
    (a between-beam correction under way): not a failed write; the beam stays held
    and the release is asked again on the next tick."""


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One processed frame, for reports and plots (times: monotonic s)."""

    frame_id: int
    t_available: float
    t_decided: float
    estimate_ms: float
    deviation_mm: tuple[float, float, float] | None
    deviation_norm_mm: float | None
    hold: bool
    changed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class HoldEvent:
    """A beam-hold or beam-release command that reached the sink."""

    event: str  # "beam_hold" | "beam_release"
    cause: str
    reason: str
    frame_id: int | None  # the frame that triggered it, None for a watchdog decision
    t_frame: float | None
    t_decided: float
    t_commanded: float  # when the sink acknowledged the write
    deviation_mm: tuple[float, float, float] | None


@dataclass(slots=True)
class _Mailbox:
    frame: KvFrame | None = None
    done: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class IntrafractionMonitor:
    """Beam hold on target deviation. `start()` at beam-on, then `run(frames)` or `feed()`."""

    def __init__(
        self,
        estimate: Estimator,
        set_beam_hold: BeamHoldSink,
        policy: BeamHoldPolicy,
        audit: Audit,
        reference_position_mm: Sequence[float],
        *,
        publish: Callable[[JsonObject], None] | None = None,
        actor: str = "monitor",
        estimate_in_thread: bool = True,
        couch_tracking: CouchTrackingLimits | None = None,
        on_tracking_suggestion: Callable[[CouchTrackingSuggestion], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = 0.05,
        on_estimate: Callable[[KvFrame, TargetEstimate, Decision], None] | None = None,
    ) -> None:
        ref = np.asarray(reference_position_mm, dtype=float)
        if ref.shape != (3,) or not np.all(np.isfinite(ref)):
            raise ValueError(f"reference target position {list(reference_position_mm)} is not "
                             "3 finite numbers (mm)")
        if couch_tracking is not None and on_tracking_suggestion is None:
            raise ValueError("couch tracking is enabled but nothing receives its suggestions")
        self._estimate = estimate
        self._sink = set_beam_hold
        self.policy = policy
        self._audit = audit
        self._publish = publish
        self.actor = actor
        self.reference = ref
        self._in_thread = estimate_in_thread
        self.couch_tracking = couch_tracking
        self._on_suggestion = on_tracking_suggestion
        # Told every frame's estimate and decision once the beam hold is commanded
        # (between-beam corrections watch a held drift through it).
        self._on_estimate = on_estimate
        self._clock = clock
        self._retry_s = retry_s
        self._state: BeamHoldMonitor | None = None
        self._sink_state: bool | None = None  # last state the sink acknowledged
        self._write_failing = False
        self._release_deferred = False
        self._lock = asyncio.Lock()
        self._tracking_total = np.zeros(3)
        self.records: list[FrameRecord] = []
        self.events: list[HoldEvent] = []
        self.frames_skipped = 0

    # ------------------------------------------------------------------ state
    @property
    def hold(self) -> bool:
        """What the monitor wants (the sink may lag while a write is retried)."""
        return self._state.hold if self._state is not None else False

    @property
    def beam_hold_acknowledged(self) -> bool | None:
        return self._sink_state

    def start(self, t: float | None = None, *, initially_held: bool = False) -> None:
        """Beam on: monitoring starts now (stale-image rule counts from here).

        `initially_held` is the beam-hold coil's state at this moment; when True
        the beam is released only after a valid in-tolerance run."""
        t0 = self._clock() if t is None else t
        self._state = BeamHoldMonitor(self.policy, t0, initially_held=initially_held)
        # The caller vouches for the coil: not held at beam-on unless it says so.
        self._sink_state = initially_held
        self._audit("monitor_start", self.actor, tolerance_mm=self.policy.tolerance_mm,
                    debounce_s=self.policy.debounce_s,
                    release_after_s=self.policy.release_after_s,
                    max_image_age_s=self.policy.max_image_age_s,
                    couch_tracking=self.couch_tracking is not None)

    def next_deadline(self) -> float | None:
        """When the stale-image rule would hold without a new frame (None: already held)."""
        return None if self._state is None else self._state.next_deadline()

    def note_tracking_applied(self, delta_lat: float, delta_long: float,
                              delta_vert: float) -> None:
        """The daemon applied a tracking correction; later suggestions count it in the total."""
        self._tracking_total += np.array([delta_lat, delta_long, delta_vert])

    # ------------------------------------------------------------- processing
    async def feed(self, frame: KvFrame) -> Decision:
        """Process one frame now: estimate, decide, command the beam hold if it changed."""
        state = self._require_started()
        t0 = time.perf_counter()
        estimate = await self._run_estimate(frame)
        estimate_ms = (time.perf_counter() - t0) * 1000.0
        now = self._clock()
        dev: tuple[float, float, float] | None = None
        if estimate.position_mm is not None:
            d = np.asarray(estimate.position_mm, dtype=float) - self.reference
            dev = (float(d[0]), float(d[1]), float(d[2]))
        decision = state.update(frame.t_acquired, dev, now)
        norm = None if dev is None else math.sqrt(sum(v * v for v in dev))
        reason = decision.reason if dev is not None or decision.changed else (
            f"no estimate: {estimate.reason}")
        self.records.append(FrameRecord(frame.frame_id, frame.t_acquired, now, estimate_ms, dev,
                                        norm, decision.hold, decision.changed, reason))
        if decision.changed or self._sink_state != decision.hold:
            await self._command(decision, frame, dev)
            if decision.changed and decision.hold and decision.cause == "deviation":
                self._suggest_tracking(dev)
        if self._on_estimate is not None:
            try:
                self._on_estimate(frame, estimate, decision)
            except Exception:  # a failing observer must never stop the beam hold
                log.exception("estimate observer failed for frame %d", frame.frame_id)
        return decision

    async def tick(self) -> Decision:
        """No new frame: apply the stale-image rule now, retry a failed write."""
        state = self._require_started()
        decision = state.tick(self._clock())
        if decision.changed or self._sink_state != decision.hold:
            await self._command(decision, None, None)
        return decision

    async def run(self, frames: AsyncIterator[KvFrame]) -> None:
        """Monitor until `frames` ends (beam off). Starts monitoring if not started."""
        if self._state is None:
            self.start()
        box = _Mailbox()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read(frames, box), name="monitor-frames")
            watchdog = tg.create_task(self._watchdog(), name="monitor-watchdog")
            await self._process(box)
            watchdog.cancel()

    # ------------------------------------------------------------ internals
    def _require_started(self) -> BeamHoldMonitor:
        if self._state is None:
            raise RuntimeError("intrafraction monitor not started (call start() at beam-on)")
        return self._state

    async def _run_estimate(self, frame: KvFrame) -> TargetEstimate:
        try:
            if self._in_thread:
                return await asyncio.to_thread(self._estimate, frame)
            return self._estimate(frame)
        except Exception as exc:  # a failing estimator is "no estimate", which fails safe
            log.exception("target estimate failed for frame %d", frame.frame_id)
            return TargetEstimate(None, f"estimate failed: {exc!r}")

    async def _read(self, frames: AsyncIterator[KvFrame], box: _Mailbox) -> None:
        try:
            async for frame in frames:
                if box.frame is not None:
                    self.frames_skipped += 1  # newest wins: never work through a backlog
                box.frame = frame
                box.ready.set()
        finally:
            box.done = True
            box.ready.set()

    async def _process(self, box: _Mailbox) -> None:
        while True:
            if box.frame is None:
                if box.done:
                    return
                box.ready.clear()  # no await since the check: nothing can slip in between
                await box.ready.wait()
                continue
            frame, box.frame = box.frame, None
            await self.feed(frame)

    async def _watchdog(self) -> None:
        self._require_started()
        idle = min(self._retry_s, self.policy.max_image_age_s / 4)
        while True:
            deadline = self.next_deadline()
            now = self._clock()
            wait = idle if deadline is None else min(idle, max(0.0, deadline - now) + 0.001)
            if self._write_failing:
                wait = min(wait, self._retry_s)
            await asyncio.sleep(wait)
            await self.tick()

    async def _command(self, decision: Decision, frame: KvFrame | None,
                       dev: tuple[float, float, float] | None) -> None:
        async with self._lock:
            hold = self.hold  # the newest wish, even if it changed while we waited
            if self._sink_state == hold:
                return
            try:
                await self._sink(hold)
            except ReleaseDeferred as exc:
                if not self._release_deferred:
                    self._audit("beam_release_deferred", self.actor, reason=str(exc))
                self._release_deferred = True
                return
            except Exception as exc:  # noqa: BLE001 - any sink failure is audited and retried
                if not self._write_failing:
                    log.error("beam %s write failed: %s", "hold" if hold else "release", exc)
                    self._audit("beam_hold_write_failed", self.actor, hold=hold, error=str(exc))
                self._write_failing = True
                self._sink_state = None
                return
            t_cmd = self._clock()
            self._write_failing = self._release_deferred = False
            self._sink_state = hold
        event = HoldEvent(
            "beam_hold" if hold else "beam_release", decision.cause, decision.reason,
            None if frame is None else frame.frame_id, None if frame is None else frame.t_acquired,
            self._clock() if frame is None else self.records[-1].t_decided, t_cmd, dev)
        self.events.append(event)
        details: JsonObject = {
            "cause": event.cause, "reason": event.reason, "frame_id": event.frame_id,
            "deviation_mm": None if dev is None else [round(v, 3) for v in dev],
            "deviation_norm_mm": decision.deviation_mm,
            "tolerance_mm": self.policy.tolerance_mm,
        }
        if frame is not None:
            details["frame_to_command_ms"] = round((t_cmd - frame.t_acquired) * 1000.0, 3)
        self._audit(event.event, self.actor, **details)
        if self._publish is not None:
            try:
                self._publish({"event": event.event, "actor": self.actor, **details})
            except Exception:  # a broken console must never stop the monitor
                log.exception("publishing %s failed", event.event)

    def _suggest_tracking(self, dev: tuple[float, float, float] | None) -> None:
        if self.couch_tracking is None or self._on_suggestion is None or dev is None:
            return
        result = suggest_couch_correction(dev, tuple(self._tracking_total), self.couch_tracking)
        if isinstance(result, CouchTrackingRefusal):
            self._audit("couch_tracking_refused", self.actor, reason=result.reason)
            return
        self._audit("couch_tracking_suggestion", self.actor,
                    delta_mm=[result.delta_lat, result.delta_long, result.delta_vert],
                    step_mm=result.step_mm, total_after_mm=result.total_after_mm)
        self._on_suggestion(result)
