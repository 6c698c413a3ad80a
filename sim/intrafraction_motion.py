"""Simulated intrafraction motion: the true target displacement during beam-on.

`MotionScenario` (room frame, mm): breathing (Lujan cos^4, mean-centred), a
linear baseline drift, excursions (sudden steps or ramps that return) and image
dropouts (frames missing, or the marker hidden). `random_scenario()` draws one
with a site policy for drift campaigns; `demo_scenario()` is the
`make demo MODE=monitor` beam-on. Part of sim/intrafraction.py's split (its
docstring has the overview).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from safety.beam_hold import BeamHoldPolicy


@dataclass(frozen=True)
class Breathing:
    amplitude_mm: float = 0.0  # peak to peak
    period_s: float = 4.0
    direction: tuple[float, float, float] = (0.0, 1.0, 0.0)  # room Y: sup-inf for HFS
    phase_s: float = 0.0

    def displacement(self, t: np.ndarray) -> np.ndarray:
        # cos^4 has mean 3/8: subtract it so the planned position is the mean position.
        s = np.cos(np.pi * (t + self.phase_s) / self.period_s) ** 4 - 3.0 / 8.0
        return self.amplitude_mm * s[:, None] * np.asarray(self.direction)[None, :]


@dataclass(frozen=True)
class Excursion:
    """Ramp to `shift_mm` over `ramp_s`, stay `duration_s`, ramp back (0: sudden)."""

    start_s: float
    duration_s: float
    shift_mm: tuple[float, float, float]
    ramp_s: float = 0.0

    def displacement(self, t: np.ndarray) -> np.ndarray:
        a, r, d = self.start_s, self.ramp_s, self.duration_s
        if r > 0:
            w = np.clip(np.minimum((t - a) / r, (a + 2 * r + d - t) / r), 0.0, 1.0)
        else:
            w = ((t >= a) & (t < a + d)).astype(float)
        return w[:, None] * np.asarray(self.shift_mm)[None, :]


@dataclass(frozen=True)
class Dropout:
    start_s: float
    duration_s: float
    kind: str = "occluded"  # "occluded": frames arrive, marker invisible; "missing": no frames

    def covers(self, t: float) -> bool:
        return self.start_s <= t < self.start_s + self.duration_s


@dataclass(frozen=True)
class MotionScenario:
    duration_s: float
    frame_period_s: float = 0.1
    breathing: Breathing | None = None
    drift_mm_per_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    excursions: tuple[Excursion, ...] = ()
    dropouts: tuple[Dropout, ...] = ()
    frame_jitter_s: float = 0.0  # uniform +- jitter on each frame time

    def displacement(self, t: float | np.ndarray) -> np.ndarray:
        """True target displacement (room mm) at time(s) `t` since beam on: (3,) or (N, 3)."""
        ts = np.atleast_1d(np.asarray(t, dtype=float))
        d = ts[:, None] * np.asarray(self.drift_mm_per_s)[None, :]
        if self.breathing is not None:
            d = d + self.breathing.displacement(ts)
        for e in self.excursions:
            d = d + e.displacement(ts)
        return d[0] if np.ndim(t) == 0 else d

    def schedule(self, rng: np.random.Generator) -> list[tuple[float, bool]]:
        """(time since beam on, marker visible) for every frame that is delivered."""
        out = []
        n = int(self.duration_s / self.frame_period_s)
        for k in range(1, n + 1):
            t = k * self.frame_period_s
            if self.frame_jitter_s > 0:
                t += float(rng.uniform(-self.frame_jitter_s, self.frame_jitter_s))
            covering = [d for d in self.dropouts if d.covers(t)]
            if any(d.kind == "missing" for d in covering):
                continue
            out.append((t, not covering))
        return out



def vec3(a: np.ndarray | Sequence[float]) -> tuple[float, float, float]:
    return (float(a[0]), float(a[1]), float(a[2]))



def random_scenario(rng: np.random.Generator, margin_mm: float = 0.5,
                    max_shift_mm: float = 12.0) -> tuple[MotionScenario, BeamHoldPolicy]:
    """A random beam-on period and site policy for drift campaigns.

    Breathing and drift stay clearly inside tolerance (tolerance - margin - 0.3
    mm); every excursion goes clearly beyond it (tolerance + margin + 0.3 mm at
    least, whatever the breathing does); excursions are either long (at least
    debounce + 1.5 frame periods), short (at most debounce - 1.5 periods) or
    slow ramps out and back. Some scenarios lose the marker for a while.
    """
    period = float(rng.choice([1 / 5, 1 / 7.5, 1 / 10, 1 / 15]))
    policy = BeamHoldPolicy(
        tolerance_mm=float(rng.choice([2.0, 3.0, 5.0])),
        debounce_s=float(rng.uniform(0.15, 0.5)),
        release_after_s=float(rng.uniform(0.2, 0.5)),
        max_image_age_s=max(3 * period, 0.4),
    )
    duration = float(rng.uniform(2.5, 3.5))
    budget = policy.tolerance_mm - margin_mm - 0.3
    amp = float(rng.uniform(0.0, 1.6 * budget * 0.8))  # peak-to-peak; |d| <= 5/8 amp
    drift_rate = float(rng.uniform(0.0, (budget - 0.625 * amp) / duration))
    drift_dir = rng.normal(size=3)
    drift = vec3(drift_rate * drift_dir / np.linalg.norm(drift_dir))
    base_max = 0.625 * amp + drift_rate * duration
    excursions = []
    dropouts = []
    t = float(rng.uniform(0.3, 0.8))
    while t < duration - 0.5:
        kind = rng.choice(["long", "short", "ramp", "dropout"], p=[0.35, 0.3, 0.2, 0.15])
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        low = policy.tolerance_mm + margin_mm + base_max + 0.3
        shift = vec3(u * rng.uniform(low, max(low, max_shift_mm)))
        if kind == "long":
            dur = float(rng.uniform(policy.debounce_s + 1.5 * period, policy.debounce_s + 1.2))
            excursions.append(Excursion(t, dur, shift))
            end = t + dur
        elif kind == "short":
            top = policy.debounce_s - 1.5 * period
            if top < 0.02:
                t += 0.2
                continue
            dur = float(rng.uniform(0.01, top))
            excursions.append(Excursion(t, dur, shift))
            end = t + dur
        elif kind == "ramp":
            ramp = float(rng.uniform(0.2, 1.0))
            dur = float(rng.uniform(0.0, 1.0))
            excursions.append(Excursion(t, dur, shift, ramp_s=ramp))
            end = t + 2 * ramp + dur
        else:
            dur = float(rng.uniform(0.1, 1.0))
            dropouts.append(Dropout(t, dur, str(rng.choice(["occluded", "missing"]))))
            end = t + dur
        t = end + policy.release_after_s + 3 * period + float(rng.uniform(0.3, 1.0))
    scenario = MotionScenario(
        duration_s=duration, frame_period_s=period,
        breathing=Breathing(amp, float(rng.uniform(2.5, 5.0)), phase_s=float(rng.uniform(0, 5))),
        drift_mm_per_s=drift, excursions=tuple(excursions), dropouts=tuple(dropouts),
        frame_jitter_s=float(rng.uniform(0.0, 0.1 * period)))
    return scenario, policy



def demo_scenario() -> MotionScenario:
    """About 14 s of beam-on: breathing within tolerance, a cough, a sudden
    shift, a slow drift and a marker occlusion."""
    return MotionScenario(
        duration_s=14.0,
        frame_period_s=0.1,
        breathing=Breathing(amplitude_mm=3.0, period_s=4.0),
        drift_mm_per_s=(0.0, 0.0, -0.05),
        excursions=(
            Excursion(1.5, 0.08, (0.0, 0.0, 6.0)),  # a cough: too short to hold
            Excursion(3.0, 2.0, (4.0, 0.0, 2.5)),  # sudden shift: hold, release when back
            Excursion(7.0, 1.5, (0.0, -3.0, -3.0), ramp_s=1.2),  # slow drift out and back
        ),
        dropouts=(Dropout(11.5, 0.8, "occluded"),),  # marker hidden: stale image rule
        frame_jitter_s=0.005,
    )
