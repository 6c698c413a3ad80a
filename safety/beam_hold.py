"""Beam hold during delivery: when a target deviation must hold the beam.

Pure logic, fed with monotonic times (s) and target deviations (room frame,
IEC 61217 X, Y, Z, mm: estimated target position minus planned position).
The async wiring (images in, PLC coil out) is daemon/monitoring.py.

Rules (docs/intrafraction-monitoring.md):

* **Hold** when the deviation has been out of tolerance for at least
  `debounce_s`. The excursion is timed from the last *valid in-tolerance*
  sample before it, not from the first out-of-tolerance one: the target may
  have left any time after that sample, so this errs towards holding. With
  samples every `p` seconds, an excursion longer than `debounce_s + p` is
  therefore always held, one shorter than `debounce_s - p` never is.
* **Hold (fail safe)** when no valid estimate has been seen for longer than
  `max_image_age_s` (image stream stopped, marker lost, estimate refused),
  whatever the last deviation was.
* **Release** only after valid estimates have stayed within
  `tolerance - release_margin` for at least `release_after_s`, timed from the
  first such sample (this errs towards staying held). Any sample that is not
  clearly in (out, in the margin band, or invalid) restarts that time.

Out of tolerance means: vector length above `tolerance_mm`, or (when
`axis_tolerance_mm` is set) any one component above its own limit.

Couch tracking (`suggest_couch_correction`) is a suggestion only, bounded and
refused beyond its bounds, never clipped; it must go through the daemon's
MotionGate like any other move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

AXIS_NAMES = ("X", "Y", "Z")
# Float time differences (0.3 - 0.1 < 0.2): a nanosecond never decides a hold.
_EPS_S = 1e-9


def _require(ok: bool, text: str) -> None:
    if not ok:
        raise ValueError(text)


@dataclass(frozen=True, slots=True)
class BeamHoldPolicy:
    """Site policy for holding the beam on target deviation (mm, s)."""

    tolerance_mm: float = 3.0  # 3D vector length
    axis_tolerance_mm: tuple[float, float, float] | None = None  # room X, Y, Z; optional
    debounce_s: float = 0.2
    release_after_s: float = 0.3
    release_margin_mm: float = 0.5  # release only within tolerance minus this (hysteresis)
    max_image_age_s: float = 0.5

    def __post_init__(self) -> None:
        _require(math.isfinite(self.tolerance_mm) and 0.1 <= self.tolerance_mm <= 50.0,
                 f"beam-hold tolerance {self.tolerance_mm} mm is outside 0.1..50 mm")
        if self.axis_tolerance_mm is not None:
            _require(len(self.axis_tolerance_mm) == 3,
                     f"per-axis beam-hold tolerance needs 3 values (X, Y, Z), "
                     f"got {len(self.axis_tolerance_mm)}")
            for name, value in zip(AXIS_NAMES, self.axis_tolerance_mm):
                _require(math.isfinite(value) and 0.1 <= value <= 50.0,
                         f"beam-hold tolerance along {name} {value} mm is outside 0.1..50 mm")
        _require(math.isfinite(self.debounce_s) and 0.0 <= self.debounce_s <= 5.0,
                 f"beam-hold debounce {self.debounce_s} s is outside 0..5 s")
        _require(math.isfinite(self.release_after_s) and 0.0 <= self.release_after_s <= 60.0,
                 f"beam release delay {self.release_after_s} s is outside 0..60 s")
        smallest = min((self.tolerance_mm, *(self.axis_tolerance_mm or ())))
        _require(math.isfinite(self.release_margin_mm)
                 and 0.0 <= self.release_margin_mm < smallest,
                 f"beam release margin {self.release_margin_mm} mm is outside "
                 f"0..{smallest} mm (the smallest tolerance)")
        _require(math.isfinite(self.max_image_age_s) and 0.01 <= self.max_image_age_s <= 10.0,
                 f"maximum image age {self.max_image_age_s} s is outside 0.01..10 s")

    def exceeds(self, deviation: Sequence[float], margin_mm: float = 0.0) -> str | None:
        """Why `deviation` is beyond tolerance minus `margin_mm`, or None if it is within."""
        norm = math.sqrt(sum(d * d for d in deviation))
        if norm > self.tolerance_mm - margin_mm:
            return f"deviation {norm:.2f} mm > {self.tolerance_mm - margin_mm:g} mm"
        if self.axis_tolerance_mm is not None:
            for name, d, tol in zip(AXIS_NAMES, deviation, self.axis_tolerance_mm):
                if abs(d) > tol - margin_mm:
                    return f"deviation along {name} {d:+.2f} mm beyond +-{tol - margin_mm:g} mm"
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the monitor wants after one update: hold or not, and whether that changed."""

    hold: bool
    changed: bool
    reason: str
    cause: str  # "deviation", "stale", "in_tolerance", "none"
    deviation_mm: float | None  # vector length of this sample, None if invalid/no sample


def _valid(deviation: Sequence[float] | None) -> tuple[float, float, float] | None:
    if deviation is None:
        return None
    if len(deviation) != 3:
        raise ValueError(f"a target deviation has 3 components (X, Y, Z), got {len(deviation)}")
    values = (float(deviation[0]), float(deviation[1]), float(deviation[2]))
    if not all(math.isfinite(v) for v in values):
        return None  # a NaN estimate is no estimate
    return values


@dataclass(slots=True)
class BeamHoldMonitor:
    """The beam-hold state machine. Not thread safe; one owner calls update/tick.

    `start_t` is when monitoring began (beam on): the stale-image rule counts
    from it until the first valid estimate arrives. `initially_held` starts the
    machine held, so the beam is released only by a valid in-tolerance run.
    """

    policy: BeamHoldPolicy
    start_t: float
    initially_held: bool = False
    hold: bool = field(init=False)
    cause: str = field(init=False, default="none")
    _last_sample_t: float = field(init=False)
    _last_valid_t: float = field(init=False)
    _last_in_t: float = field(init=False)  # last valid in-tolerance sample
    _out_since: float | None = field(init=False, default=None)  # excursion timed from here
    _clear_since: float | None = field(init=False, default=None)  # clearly-in run start
    _out_reason: str = field(init=False, default="")  # why the current excursion is out

    def __post_init__(self) -> None:
        _require(math.isfinite(self.start_t), f"monitor start time {self.start_t} s is not finite")
        self.hold = self.initially_held
        self.cause = "initial" if self.initially_held else "none"
        self._last_sample_t = self.start_t
        self._last_valid_t = self.start_t
        self._last_in_t = self.start_t

    # ------------------------------------------------------------------ API
    def update(self, t: float, deviation: Sequence[float] | None,
               now: float | None = None) -> Decision:
        """One sample: `deviation` estimated from an image acquired at `t`, or
        None when that image gave no valid estimate. `now` (default `t`) is
        when the decision is taken; it only matters for the stale-image rule."""
        dev = _valid(deviation)
        now = t if now is None else max(now, t)
        if not math.isfinite(t) or t < self._last_sample_t:
            # Out of order or nonsense time: it tells nothing about the present.
            return self._decide(now, None, sample_reason=f"sample at {t} s ignored (out of order)")
        self._last_sample_t = t
        # A gap in valid estimates longer than the maximum image age holds even if
        # no tick() noticed it in time; the next samples may then release as usual.
        gap = t - self._last_valid_t
        norm = None if dev is None else math.sqrt(sum(d * d for d in dev))
        if dev is None:
            self._clear_since = None
        else:
            self._last_valid_t = t
            out = self.policy.exceeds(dev)
            if out is not None:
                if self._out_since is None:
                    self._out_since = self._last_in_t
                self._out_reason = out
                self._clear_since = None
            else:
                self._out_since = None
                self._last_in_t = t
                if self.policy.exceeds(dev, self.policy.release_margin_mm) is None:
                    if self._clear_since is None:
                        self._clear_since = t
                else:
                    self._clear_since = None  # in tolerance but within the margin band
        if gap > self.policy.max_image_age_s + _EPS_S:
            # Continuity was lost: a release needs a fresh in-tolerance run from here.
            if self._clear_since is not None:
                self._clear_since = t
            return self._set(True, "stale", norm,
                             f"no valid target estimate for {gap:.3f} s before this frame "
                             f"(maximum image age {self.policy.max_image_age_s} s)")
        return self._decide(now, norm, sample_t=t)

    def tick(self, now: float) -> Decision:
        """No new sample: re-evaluate the stale-image rule at `now`."""
        return self._decide(now, None)

    def next_deadline(self) -> float | None:
        """The time at which tick() would first hold for staleness, or None if held."""
        if self.hold:
            return None
        return self._last_valid_t + self.policy.max_image_age_s

    # ------------------------------------------------------------ internals
    def _decide(self, now: float, norm: float | None, sample_t: float | None = None,
                sample_reason: str = "") -> Decision:
        p = self.policy
        age = now - self._last_valid_t
        if age > p.max_image_age_s + _EPS_S:
            self._clear_since = None
            return self._set(True, "stale", norm,
                             f"no valid target estimate for {age:.3f} s "
                             f"(maximum image age {p.max_image_age_s} s)")
        if self._out_since is not None and sample_t is not None:
            out_for = sample_t - self._out_since
            if out_for >= p.debounce_s - _EPS_S:
                return self._set(True, "deviation", norm,
                                 f"out of tolerance ({self._out_reason}) for {out_for:.3f} s "
                                 f"(debounce {p.debounce_s} s)")
        if self.hold and self._clear_since is not None and sample_t is not None:
            in_for = sample_t - self._clear_since
            if in_for >= p.release_after_s - _EPS_S:
                return self._set(False, "in_tolerance", norm,
                                 f"within {p.tolerance_mm - p.release_margin_mm:.2f} mm for "
                                 f"{in_for:.3f} s (release after {p.release_after_s} s)")
        return Decision(self.hold, False, sample_reason or "no change", self.cause, norm)

    def _set(self, hold: bool, cause: str, norm: float | None, reason: str) -> Decision:
        changed = hold != self.hold
        if changed or hold:
            self.cause = cause
        self.hold = hold
        return Decision(hold, changed, reason, cause, norm)


# ---------------------------------------------------------------------------
# Couch tracking: a bounded suggestion, never a command.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CouchTrackingLimits:
    """Bounds on couch corrections during beam-on (site option, off by default)."""

    max_step_mm: float = 2.0  # one correction, vector length
    max_total_mm: float = 5.0  # net offset from the verified set-up, vector length

    def __post_init__(self) -> None:
        _require(math.isfinite(self.max_step_mm) and 0.0 < self.max_step_mm <= 5.0,
                 f"couch tracking step limit {self.max_step_mm} mm is outside 0..5 mm")
        _require(math.isfinite(self.max_total_mm) and 0.0 < self.max_total_mm <= 10.0,
                 f"couch tracking total limit {self.max_total_mm} mm is outside 0..10 mm")


@dataclass(frozen=True, slots=True)
class CouchTrackingSuggestion:
    """A translation-only couch correction (table-top lat/long/vert deltas, mm)."""

    delta_lat: float
    delta_long: float
    delta_vert: float
    step_mm: float
    total_after_mm: float  # net tracking offset if this correction is applied


@dataclass(frozen=True, slots=True)
class CouchTrackingRefusal:
    reason: str


def suggest_couch_correction(
    deviation_mm: Sequence[float],
    applied_total_mm: Sequence[float],
    limits: CouchTrackingLimits,
    couch_yaw_deg: float = 0.0,
) -> CouchTrackingSuggestion | CouchTrackingRefusal:
    """The couch translation that brings a target displaced by `deviation_mm`
    (room frame) back, or why not.

    `applied_total_mm` is the net table-top translation tracking has already
    applied in this fraction. A table-top translation t moves the patient by
    Rz(yaw) t in the room (docs/geometry.md), so the correction is
    t = -Rz(yaw)^-1 deviation. Out-of-bound corrections are refused, not
    clipped: a partial correction would look like success.
    """
    dev = _valid(deviation_mm)
    if dev is None:
        return CouchTrackingRefusal("no valid target deviation")
    if len(applied_total_mm) != 3 or not all(math.isfinite(v) for v in applied_total_mm):
        return CouchTrackingRefusal(f"applied tracking offset {list(applied_total_mm)} is not "
                                    "3 finite numbers (mm)")
    if not math.isfinite(couch_yaw_deg):
        return CouchTrackingRefusal(f"couch yaw {couch_yaw_deg} deg is not finite")
    a = math.radians(couch_yaw_deg)
    c, s = math.cos(a), math.sin(a)
    dx, dy, dz = dev
    # Rz(yaw)^-1 = Rz(-yaw)
    t = (-(c * dx + s * dy), -(-s * dx + c * dy), -dz)
    step = math.sqrt(sum(v * v for v in t))
    if step > limits.max_step_mm:
        return CouchTrackingRefusal(
            f"tracking correction {step:.2f} mm exceeds the step limit {limits.max_step_mm} mm")
    total = tuple(float(applied_total_mm[i]) + t[i] for i in range(3))
    total_len = math.sqrt(sum(v * v for v in total))
    if total_len > limits.max_total_mm:
        return CouchTrackingRefusal(
            f"tracking offset after this correction {total_len:.2f} mm exceeds the total "
            f"limit {limits.max_total_mm} mm")
    return CouchTrackingSuggestion(t[0], t[1], t[2], step, total_len)
