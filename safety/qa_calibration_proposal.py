"""A calibration proposal from a daily QA result and a sag model (docs/qa.md).

The moves of a daily QA are not compensated: the QA measures the couch itself, and
what it measured against what was commanded is what a new axis scale is fitted from.
A physicist proposes, a second physicist approves (igrtd, daemon/qa_workflow.py).

Pure logic: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from safety.pose import AXES, ROTATION_AXES
from safety.qa import DailyQaResult
from safety.qa_calibration import MAX_SCALE, MIN_SCALE, SCALE_SIGNIFICANCE, Calibration
from safety.qa_sag import SagModel

__all__ = ["propose_calibration"]


# A yaw offset smaller than this (deg) is not worth applying.
MIN_YAW_OFFSET_DEG = 0.01


def _scale_fit(daily: DailyQaResult, axis: str) -> tuple[float, float] | None:
    """(scale, its standard error) of one axis, or None: for a translation, the daily
    result's fit over its steps and travels (safety.qa_travel); otherwise from the steps
    that moved it."""
    fit = daily.axis_fit
    if fit is not None and axis in fit.scale and daily.travels:
        return fit.scale[axis], fit.scale_se[axis]
    pairs = [(m.commanded.get(axis), m.measured.get(axis)) for m in daily.steps
             if m.commanded.get(axis) != 0.0]
    if not pairs:
        return None
    c = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    ss = float(c @ c)
    slope = float(c @ y) / ss
    # Noise of one measurement: from the returns to home (their error is pure noise).
    noise = math.sqrt(float(np.mean([m.error.get(axis) ** 2 for m in daily.returns])))
    if len(pairs) > 1:
        resid = y - slope * c
        noise = max(noise, math.sqrt(float(resid @ resid) / (len(pairs) - 1)))
    return slope - 1.0, noise / math.sqrt(ss)


def propose_calibration(
    daily: DailyQaResult | None,
    sag: SagModel | None = None,
    *,
    previous: Calibration | None = None,
    axis_offset: Mapping[str, float] | None = None,
    version: int | None = None,
) -> Calibration:
    """A calibration proposal.

    * imaging_iso_offset_mm: the daily result's iso offset (measured on the raw baseline
      image); `previous`'s without a daily result.
    * axis_scale: per axis moved by the daily steps, the least-squares slope of measured
      against commanded, minus 1, when it is at least 0.01 % and 3 standard errors
      (noise from the returns to home and the fit) -- else 0; `previous`'s for axes no
      step moved. A slope off by more than 5 % is refused (the couch needs service).
    * axis_offset: `axis_offset` when given, else `previous`'s; then yaw from the daily
      result's travels of lat and long (safety.qa_travel: the turn of the couch's
      translations), when it is at least 0.01 deg and 3 standard errors -- else none.
      Other constant offsets cannot be seen by images relative to a baseline.
    * sag: `sag` when given, else `previous`'s.
    * version: `version`, else previous.version + 1, else 1.
    """
    prev = previous or Calibration.identity()
    iso = prev.imaging_iso_offset_mm
    scales = dict(prev.axis_scale)
    if daily is not None:
        if not isinstance(daily, DailyQaResult):
            raise ValueError(f"daily must be a DailyQaResult, got {type(daily).__name__}")
        iso = daily.iso_offset_mm
        for axis in AXES:
            fit = _scale_fit(daily, axis)
            if fit is None:
                continue
            s, se = fit
            unit = "deg" if axis in ROTATION_AXES else "mm"
            if abs(s) < MIN_SCALE or abs(s) < SCALE_SIGNIFICANCE * se:
                scales.pop(axis, None)  # not measurably different from 1:1
            elif not abs(s) <= MAX_SCALE:
                raise ValueError(
                    f"{axis} travel is off by {s * 100:+.2f} % of the commanded {unit} (limit "
                    f"+-{MAX_SCALE * 100:g} %): the couch needs service, not a calibration")
            else:
                scales[axis] = s
    offsets = dict(prev.axis_offset) if axis_offset is None else dict(axis_offset)
    axes = None if daily is None else daily.axis_fit
    if (daily is not None and axes is not None and axes.yaw_offset_deg is not None
            and axes.yaw_offset_se_deg is not None
            and {"lat", "long"} <= {m.axis for m in daily.travels}):
        yaw, se = axes.yaw_offset_deg, axes.yaw_offset_se_deg
        if abs(yaw) < MIN_YAW_OFFSET_DEG or abs(yaw) < SCALE_SIGNIFICANCE * se:
            offsets.pop("yaw", None)  # not measurably turned
        else:
            offsets["yaw"] = yaw
    model = sag if sag is not None else prev.sag
    if version is None:
        version = prev.version + 1 if previous is not None else 1
    return Calibration(iso, scales, offsets, model, version)
