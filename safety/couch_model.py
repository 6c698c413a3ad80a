"""What the couch can reach: travel, rotation and coupled limits, pivot, speeds.

Limits are checked, never applied: `check_pose` reports every violation with
value, limit and unit, and nothing in this module ever clips a value.

JSON form (all keys except `ranges` optional; ranges may also be `[min, max]`):

    {"ranges": {"lat": {"min": -250, "max": 250}, ..., "roll": {"min": -3, "max": 3}},
     "coupled": [{"when": {"axis": "pitch", "abs_gt": 2.0},
                  "limit": {"axis": "roll", "min": -2, "max": 2}}],
     "pivot": [0, 0, -150],
     "max_speed": {"lat": 20, "yaw": 2}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from safety.pose import AXES, UNITS, Pose

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _known_axis(axis: str) -> str:
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r} (expected one of {', '.join(AXES)})")
    return axis


class AxisRange(BaseModel):
    model_config = _STRICT
    min: float
    max: float

    @model_validator(mode="before")
    @classmethod
    def _accept_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 2:
                raise ValueError(f"a range is [min, max], got {len(data)} values")
            return {"min": data[0], "max": data[1]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> AxisRange:
        if not self.min < self.max:
            raise ValueError(f"min {self.min:g} must be less than max {self.max:g}")
        return self


class CoupledCondition(BaseModel):
    """`|axis| > abs_gt` (or `>= abs_ge`): when the coupled limit applies."""

    model_config = _STRICT
    axis: str
    abs_gt: float | None = None
    abs_ge: float | None = None

    _axis = field_validator("axis")(_known_axis)

    @model_validator(mode="after")
    def _one_threshold(self) -> CoupledCondition:
        if (self.abs_gt is None) == (self.abs_ge is None):
            raise ValueError("give exactly one of abs_gt or abs_ge")
        threshold = self.threshold
        if threshold < 0:
            raise ValueError(f"threshold {threshold:g} must not be negative")
        return self

    @property
    def threshold(self) -> float:
        return self.abs_gt if self.abs_gt is not None else float(self.abs_ge)  # type: ignore[arg-type]

    def holds(self, pose: Pose) -> bool:
        v = abs(pose.get(self.axis))
        # NaN makes both comparisons False; a NaN pose is refused by the range check anyway.
        return v > self.threshold if self.abs_gt is not None else v >= self.threshold

    def describe(self) -> str:
        op = ">" if self.abs_gt is not None else ">="
        return f"|{self.axis}| {op} {self.threshold:.2f} {UNITS[self.axis]}"


class AxisLimit(AxisRange):
    axis: str

    _axis = field_validator("axis")(_known_axis)


class CoupledLimit(BaseModel):
    model_config = _STRICT
    when: CoupledCondition
    limit: AxisLimit


@dataclass(frozen=True, slots=True)
class LimitViolation:
    axis: str
    value: float
    min: float
    max: float
    unit: str
    condition: str | None = None  # e.g. "|pitch| > 2.00 deg" for a coupled limit

    @property
    def message(self) -> str:
        text = (
            f"{self.axis} {self.value:.2f} {self.unit} outside limit "
            f"{self.min:.2f}..{self.max:.2f} {self.unit}"
        )
        return f"{text} while {self.condition}" if self.condition else text

    def __str__(self) -> str:
        return self.message


_DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "lat": (-250.0, 250.0),
    "long": (-600.0, 600.0),
    "vert": (-400.0, 200.0),
    "yaw": (-95.0, 95.0),
    "pitch": (-3.0, 3.0),
    "roll": (-3.0, 3.0),
}


class CouchModel(BaseModel):
    model_config = _STRICT
    ranges: dict[str, AxisRange]
    coupled: tuple[CoupledLimit, ...] = ()
    pivot: tuple[float, float, float] = (0.0, 0.0, -150.0)
    max_speed: dict[str, float] | None = None  # mm/s or deg/s per axis

    @field_validator("ranges")
    @classmethod
    def _all_axes(cls, v: dict[str, AxisRange]) -> dict[str, AxisRange]:
        for axis in v:
            _known_axis(axis)
        missing = [a for a in AXES if a not in v]
        if missing:
            raise ValueError(f"missing ranges for axes: {', '.join(missing)}")
        return {a: v[a] for a in AXES}

    @field_validator("max_speed")
    @classmethod
    def _positive_speeds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        for axis, speed in v.items():
            _known_axis(axis)
            if not speed > 0:
                raise ValueError(f"max speed of {axis} must be positive, got {speed:g}")
        return v

    @classmethod
    def default(cls) -> CouchModel:
        """The simulator's couch (docs/geometry.md)."""
        return cls(
            ranges={a: AxisRange(min=lo, max=hi) for a, (lo, hi) in _DEFAULT_RANGES.items()},
            coupled=(
                CoupledLimit(
                    when=CoupledCondition(axis="pitch", abs_gt=2.0),
                    limit=AxisLimit(axis="roll", min=-2.0, max=2.0),
                ),
            ),
            pivot=(0.0, 0.0, -150.0),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CouchModel:
        """Validate a couch model; ValueError with one line naming location and problem."""
        if not isinstance(data, Mapping):
            # ValueError, not TypeError: this is bad user input, reported like any other.
            raise ValueError(  # noqa: TRY004
f"couch model: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ValueError(f"couch model: {_one_line(exc)}") from None

    @classmethod
    def from_json_text(cls, text: str) -> CouchModel:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"couch model is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return cls.from_mapping(data)

    def with_pivot(self, pivot: tuple[float, float, float]) -> CouchModel:
        p = tuple(float(v) for v in pivot)
        if len(p) != 3 or not all(math.isfinite(v) for v in p):
            raise ValueError(f"pivot must be 3 finite numbers in mm, got {pivot!r}")
        return self.model_copy(update={"pivot": p})

    def check_pose(self, pose: Pose) -> list[LimitViolation]:
        """Every limit the pose breaks; empty means reachable. Never clips."""
        out: list[LimitViolation] = []
        for axis, rng in self.ranges.items():
            v = pose.get(axis)
            # Written as "not inside" so NaN counts as outside.
            if not (rng.min <= v <= rng.max):
                out.append(LimitViolation(axis, v, rng.min, rng.max, UNITS[axis]))
        for rule in self.coupled:
            if rule.when.holds(pose):
                lim = rule.limit
                v = pose.get(lim.axis)
                if not (lim.min <= v <= lim.max):
                    out.append(
                        LimitViolation(
                            lim.axis, v, lim.min, lim.max, UNITS[lim.axis], rule.when.describe()
                        )
                    )
        return out


def _one_line(exc: ValidationError) -> str:
    """First pydantic error as 'location: problem' on one line (plus a count of others)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = str(first["msg"]).removeprefix("Value error, ")
    n = len(errors) - 1
    more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
    return f"{loc}: {msg}{more}".replace("\n", " ")
