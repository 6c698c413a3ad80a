"""Daily couch and imaging QA (AAPM TG-142): from measurements to a pass/fail result.

The daily QA (issue 16) images a phantom with a BB: a baseline CBCT at the QA
home pose, then one CBCT after each move of the daily pattern (`qa_pattern`:
every axis +step, home, -step, home). Each later image is registered rigidly
to the baseline, which gives how the table top moved (`room_shift_from_registration`,
`couch_motion_from_registration`); the BB in the baseline gives where the
imaging isocentre is relative to the treatment isocentre (`iso_offset_from_bb`).
The geometry of that (fiducial fit, room shift, couch delta, iso offset) is
safety.qa_geometry; the travel part of the pattern (each translation moved alone
50 mm, for scale and yaw offset) is safety.qa_travel.
`evaluate_daily` then checks, against a TG-142 profile (safety.qa_tolerances):

* iso_coincidence (axis "vector"): length of the imaging-iso offset, mm;
* positioning (each axis): max over the steps of |measured - commanded|;
* repeatability (each axis): max over the returns to home of |measured - commanded|
  (commanded is home, 0);
* travel (lat, long, vert, when the travel part was run): max over that axis's
  travels of |measured - expected| of any translation component, mm;
* axis_alignment (axis yaw, with travels of both lat and long): the couch's yaw
  offset fitted from the translations, deg (safety.qa_travel).

Every check names its value, limit and unit; a value passes when value <= limit.

Under a calibration (issue 16 item 7; safety.qa_calibration): a daily QA judges
the room as the calibrated system sees it. `evaluate_daily(..., calibration=cal,
home=, load_kg=)` still reports the measured (physical) `iso_offset_mm` -- what a
new calibration is proposed from -- and adds `iso_offset_residual_mm` = measured
minus `cal.imaging_iso_offset_mm`, which the iso_coincidence check uses. A
positioning check compares the measured couch motion of a step with the motion the
calibration predicts for the commanded (uncompensated) step:
predict_real(home + commanded) - predict_real(home). The QA moves themselves stay
uncompensated (QA measures the couch itself, and the stored measured-vs-commanded
pairs stay what `propose_calibration` fits a new scale from); predicting the
expected motion on the evaluation side is the same test as compensating each move
and expecting the commanded motion, without changing a single QA move. A return to
home is predicted to move by 0, so repeatability is unchanged. Without a
calibration (or with one without a couch term) the expected motion is the
commanded one itself and every value is exactly what it was without.

Frames (docs/geometry.md): registrations are ITK fixed -> moving with fixed =
baseline image, moving = later image, both DICOM LPS; the image frame is tied to
the room by M (the orientation matrix of the patient position; the QA phantom is
imaged as HFS). A measured "room shift" is a Pose-like six numbers: lat, long,
vert = translation of a chosen point (the BB or the phantom centre) along IEC
X, Y, Z in mm, and yaw, pitch, roll = the rotation of the table top decomposed as
R = Rz(yaw) Rx(pitch) Ry(roll), degrees.

Rotation steps and the pivot: the couch pitches and rolls about its pivot (150 mm
under the table top in the default couch), not about the BB, so a 1 deg pitch
also carries the BB about 2.6 mm along Y. A room shift of the BB therefore does
not equal the commanded couch delta for pitch and roll steps. Pass measurements
to `evaluate_daily` in couch axes (`couch_motion_from_registration`, or
`couch_delta_from_room_shift` on a room shift): they equal the commanded delta
for a perfect couch, for every axis. (For pure translations the two agree.)

Pure logic: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safety.pose import AXES, ROTATION_AXES, UNITS, Pose
from safety.qa_tolerances import PROFILES, Profile, finite_number, resolve_profile
from safety.qa_travel import (
    TRAVEL_AXES,
    AxisFit,
    TravelMeasurement,
    expected_travel,
    fit_axes,
    travel_pattern,
)
from safety.qa_values import Vec3, clean, pose_json, pose_of, vec3

if TYPE_CHECKING:  # safety.qa_calibration imports this module; at run time: imported late
    from safety.qa_calibration import Calibration

__all__ = [
    "Check",
    "DailyQaResult",
    "QaMeasurement",
    "evaluate_daily",
    "qa_pattern",
]

# A return is "at home" when its commanded delta is 0 within this (mm or deg).
HOME_EPSILON = 1e-6
CHECK_NAMES = ("iso_coincidence", "positioning", "repeatability", "travel", "axis_alignment")


# --------------------------------------------------------------------------- pattern


def qa_pattern(step_mm: float = 10.0, step_deg: float = 1.0,
               axes: Sequence[str] = AXES, travel_mm: float = 0.0) -> list[Pose]:
    """The daily pattern, relative to the QA home pose: for each axis +step, home,
    -step, home (translations by `step_mm`, rotations by `step_deg`); then, with
    `travel_mm` > 0, the travel part (safety.qa_travel.travel_pattern)."""
    mm = finite_number(step_mm, "step_mm", "mm")
    deg = finite_number(step_deg, "step_deg", "deg")
    if not mm > 0:
        raise ValueError(f"step_mm {mm:g} mm must be greater than 0 mm")
    if not deg > 0:
        raise ValueError(f"step_deg {deg:g} deg must be greater than 0 deg")
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise ValueError(f"unknown couch axes: {', '.join(map(str, unknown))}")
    out: list[Pose] = []
    for axis in axes:
        step = deg if axis in ROTATION_AXES else mm
        out += [Pose(**{axis: step}), Pose(), Pose(**{axis: -step}), Pose()]
    return out + travel_pattern(travel_mm)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class QaMeasurement:
    """One image after a QA move. `commanded`: the couch delta relative to the QA home
    pose. `measured`: the motion imaging measured relative to the baseline image, six
    numbers (lat, long, vert mm; yaw, pitch, roll deg), in couch axes (see the module
    doc) or as a room shift. A Pose, a dict of the six axes or six numbers."""

    commanded: Pose
    measured: Pose
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "commanded", pose_of(self.commanded, "commanded"))
        object.__setattr__(self, "measured", pose_of(self.measured, "measured"))
        if not isinstance(self.label, str):
            raise ValueError(f"measurement label must be text, got {self.label!r}")  # noqa: TRY004

    @property
    def error(self) -> Pose:
        return self.measured.minus(self.commanded)

    @property
    def at_home(self) -> bool:
        return all(abs(v) <= HOME_EPSILON for v in self.commanded)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "commanded": pose_json(self.commanded),
                "measured": pose_json(self.measured), "error": pose_json(self.error)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> QaMeasurement:
        if not isinstance(d, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a QA measurement must be an object, got {type(d).__name__}")
        commanded: Any = d.get("commanded")
        measured: Any = d.get("measured")
        return cls(commanded, measured, str(d.get("label", "")))


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # iso_coincidence, positioning, repeatability
    axis: str  # "vector" or a couch axis
    value: float
    limit: float
    unit: str
    passed: bool

    @property
    def message(self) -> str:
        what = self.name.replace("_", " ")
        verdict = "within" if self.passed else "exceeds"
        digits = 2  # more only where 2 would print a failing value equal to its limit
        while (not self.passed and digits < 6
               and f"{self.value:.{digits}f}" == f"{self.limit:.{digits}f}"):
            digits += 1
        return (f"{what} {self.axis}: {self.value:.{digits}f} {self.unit} {verdict} limit "
                f"{self.limit:.{digits}f} {self.unit}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "axis": self.axis, "value": clean(self.value),
                "limit": self.limit, "unit": self.unit, "passed": self.passed,
                "message": self.message}


def _check(name: str, axis: str, value: float, limit: float, unit: str) -> Check:
    # Written "value <= limit" so that a NaN (which cannot get here) would fail.
    return Check(name, axis, value, limit, unit, bool(value <= limit))


@dataclass(frozen=True)
class DailyQaResult:
    profile: Profile
    iso_offset_mm: Vec3
    checks: tuple[Check, ...]
    accuracy: dict[str, float]  # axis -> max |measured - commanded| over the steps
    repeatability: dict[str, float]  # axis -> max |measured - commanded| over the returns
    steps: tuple[QaMeasurement, ...]
    returns: tuple[QaMeasurement, ...]
    axes_tested: tuple[str, ...] = field(default=())  # axes some step moved
    # Under a calibration (module doc): the calibration, the QA home pose and load its
    # prediction used, and per step the couch motion it predicts (= commanded without).
    calibration: Calibration | None = None
    home: Pose = field(default_factory=Pose)
    load_kg: float = 0.0
    expected: tuple[Pose, ...] = field(default=())
    # The travel part (safety.qa_travel): its measurements, the motion expected of each,
    # and the fitted scales and yaw offset (from the steps and the travels).
    travels: tuple[TravelMeasurement, ...] = field(default=())
    travel_expected: tuple[Vec3, ...] = field(default=())
    axis_fit: AxisFit | None = None

    @property
    def calibration_version(self) -> int:
        """The version of the calibration the room was judged under; 0: none."""
        return 0 if self.calibration is None else self.calibration.version

    @property
    def iso_offset_residual_mm(self) -> Vec3:
        """The measured imaging-iso offset minus the calibration's: what the calibrated
        system still sees (the measured one itself without a calibration)."""
        if self.calibration is None:
            return self.iso_offset_mm
        o = self.calibration.imaging_iso_offset_mm
        m = self.iso_offset_mm
        return (m[0] - o[0], m[1] - o[1], m[2] - o[2])

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.message for c in self.checks if not c.passed]

    @property
    def iso_offset_norm_mm(self) -> float:
        return math.hypot(*self.iso_offset_mm)

    def check(self, name: str, axis: str) -> Check:
        for c in self.checks:
            if c.name == name and c.axis == axis:
                return c
        raise KeyError(f"no check {name} {axis}")

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "profile": self.profile.name,
            "tolerances": self.profile.model_dump(),
            "checks": [c.to_json() for c in self.checks],
            "failures": self.failures,
            "iso_offset_mm": [clean(v) for v in self.iso_offset_mm],
            "iso_offset_norm_mm": clean(self.iso_offset_norm_mm),
            "iso_offset_residual_mm": [clean(v) for v in self.iso_offset_residual_mm],
            "iso_offset_residual_norm_mm": clean(math.hypot(*self.iso_offset_residual_mm)),
            "calibration_version": self.calibration_version,
            "calibration": None if self.calibration is None else {
                "calibration": self.calibration.to_json(), "home": pose_json(self.home),
                "load_kg": self.load_kg},
            "accuracy": {a: clean(v) for a, v in self.accuracy.items()},
            "repeatability": {a: clean(v) for a, v in self.repeatability.items()},
            "units": dict(UNITS),
            "axes_tested": list(self.axes_tested),
            "steps": [self._step_json(i, m) for i, m in enumerate(self.steps)],
            "returns": [m.to_json() for m in self.returns],
            "travels": [self._travel_json(m, e)
                        for m, e in zip(self.travels, self.travel_expected, strict=True)],
            "axis_fit": None if self.axis_fit is None else self.axis_fit.to_json(),
        }

    @staticmethod
    def _travel_json(m: TravelMeasurement, expected: Vec3) -> dict[str, Any]:
        return {**m.to_json(), "expected_mm": dict(zip(TRAVEL_AXES, map(clean, expected),
                                                       strict=True)),
                "error_mm": clean(m.error_mm(expected))}

    def _step_json(self, i: int, m: QaMeasurement) -> dict[str, Any]:
        out = m.to_json()
        if self.calibration is not None:  # the calibrated prediction and what is left
            out["expected"] = pose_json(self.expected[i])
            out["residual"] = pose_json(m.measured.minus(self.expected[i]))
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DailyQaResult:
        """Rebuilt from `to_json` output (a stored result) by evaluating its measurements
        again with its stored tolerances (and its stored calibration, if any)."""
        if not isinstance(d, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a daily QA result must be an object, got {type(d).__name__}")
        tolerances = d.get("tolerances")
        if isinstance(tolerances, Mapping):
            try:
                profile = Profile.model_validate(dict(tolerances))
            except ValueError as exc:
                raise ValueError(f"stored QA tolerances are unusable: "
                                 f"{str(exc).splitlines()[0]}") from None
        else:
            profile = resolve_profile(str(d.get("profile", "conventional")))
        steps = [QaMeasurement.from_json(m) for m in d.get("steps") or []]
        returns = [QaMeasurement.from_json(m) for m in d.get("returns") or []]
        travels = [TravelMeasurement.from_json(m) for m in d.get("travels") or []]
        iso: Any = d.get("iso_offset_mm")
        applied = d.get("calibration")
        if applied is None:
            return evaluate_daily(iso, steps, returns, profile, travels=travels)
        from safety.qa_calibration import Calibration  # late: it imports this module

        if not isinstance(applied, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a stored QA calibration must be an object, got {type(applied).__name__}")
        cal = Calibration.from_json(applied.get("calibration") or {})
        home: Any = applied.get("home", Pose())
        load: Any = applied.get("load_kg", 0.0)
        return evaluate_daily(iso, steps, returns, profile, cal,
                              home=pose_of(home, "calibration home"), load_kg=load,
                              travels=travels)


def evaluate_daily(
    iso_offset_mm: Sequence[float],
    steps: Sequence[QaMeasurement],
    returns: Sequence[QaMeasurement],
    profile: Profile | str = "conventional",
    calibration: Calibration | None = None,
    *,
    home: Pose | None = None,
    load_kg: float = 0.0,
    travels: Sequence[TravelMeasurement] = (),
) -> DailyQaResult:
    """The daily QA verdict (module doc). `steps`: measurements after moves away from
    home; `returns`: measurements back at home (commanded 0). One-line ValueError for
    unusable input (no steps, no returns, a step commanded to home, a return commanded
    elsewhere, a non-finite number).

    `calibration`: the active one, or None. With it the room is judged as the
    calibrated system sees it (module doc): iso_coincidence on the measured offset
    minus the calibration's, positioning on |measured - predicted| where predicted =
    predict_real(home + commanded) - predict_real(home) for the couch at the QA `home`
    pose (reported) with `load_kg` on it (only the sag term depends on either). The
    QA moves are not compensated, so predicting their real motion is the simplest
    correct comparison: it needs no change to a move, and the stored commanded and
    measured motions stay the raw ones a new calibration is fitted from. None:
    exactly the verdict without a calibration.

    `travels`: the travel part's measurements (safety.qa_travel), none when it was not
    run: then no travel or axis_alignment check, and the fitted scales and yaw offset
    come from the steps alone."""
    if isinstance(profile, str):
        profile = resolve_profile(profile)
    elif not isinstance(profile, Profile):
        raise ValueError(  # noqa: TRY004
            f"profile must be a Profile or one of {', '.join(PROFILES)}, got {profile!r}")
    iso = vec3(iso_offset_mm, "iso_offset_mm")
    steps = [m if isinstance(m, QaMeasurement) else QaMeasurement(*m) for m in steps]
    returns = [m if isinstance(m, QaMeasurement) else QaMeasurement(*m) for m in returns]
    if not steps:
        raise ValueError("daily QA needs at least one step (a measured move away from home)")
    if not returns:
        raise ValueError("daily QA needs at least one return to home (repositioning)")
    for i, m in enumerate(steps, 1):
        if m.at_home:
            raise ValueError(f"step {i} ({m.label or 'unlabelled'}) commands no move: "
                             f"it is a return to home")
    for i, m in enumerate(returns, 1):
        if not m.at_home:
            axis = max(AXES, key=lambda a: abs(m.commanded.get(a)))
            raise ValueError(
                f"return {i} ({m.label or 'unlabelled'}) is commanded to {axis} "
                f"{m.commanded.get(axis):.2f} {UNITS[axis]}, not to home")

    home_pose = Pose() if home is None else pose_of(home, "home pose")
    load = finite_number(load_kg, "load_kg", "kg")
    if load < 0:
        raise ValueError(f"load_kg {load:g} kg must not be negative (limit 0 kg)")
    expected = [m.commanded for m in steps]
    judged_iso = iso
    if calibration is not None:
        from safety.qa_calibration import Calibration, predict_real  # late, as above

        if not isinstance(calibration, Calibration):
            raise ValueError(
                f"calibration must be a Calibration or None, got {type(calibration).__name__}")
        o = calibration.imaging_iso_offset_mm
        judged_iso = (iso[0] - o[0], iso[1] - o[1], iso[2] - o[2])
        if calibration.axis_scale or calibration.axis_offset or calibration.has_sag:
            real_home = predict_real(home_pose, calibration, load)
            expected = [predict_real(home_pose.plus(m.commanded), calibration, load)
                        .minus(real_home) for m in steps]

    # Without a couch term `expected` holds the commanded poses themselves: m.error, as ever.
    errors = [m.error if e is m.commanded else m.measured.minus(e)
              for m, e in zip(steps, expected, strict=True)]
    accuracy = {a: max(abs(e.get(a)) for e in errors) for a in AXES}
    repeat = {a: max(abs(m.error.get(a)) for m in returns) for a in AXES}
    tested = tuple(a for a in AXES if any(abs(m.commanded.get(a)) > HOME_EPSILON for m in steps))

    checks = [_check("iso_coincidence", "vector", math.hypot(*judged_iso),
                     profile.iso_coincidence_mm, "mm")]
    for name, values in (("positioning", accuracy), ("repeatability", repeat)):
        for a in AXES:
            unit = UNITS[a]
            checks.append(_check(name, a, values[a], profile.limit(name, unit), unit))
    travel_list = [m if isinstance(m, TravelMeasurement) else TravelMeasurement(*m)
                   for m in travels]
    travel_expected = [expected_travel(m, calibration, home_pose, load) for m in travel_list]
    for axis in TRAVEL_AXES:
        errs = [m.error_mm(e) for m, e in zip(travel_list, travel_expected, strict=True)
                if m.axis == axis]
        if errs:
            checks.append(_check("travel", axis, max(errs), profile.limit("travel", "mm"), "mm"))
    fit = _fit_axes(steps, returns, travel_list)
    traveled = {m.axis for m in travel_list}
    if fit.yaw_offset_deg is not None and {"lat", "long"} <= traveled:
        cal_yaw = 0.0 if calibration is None else calibration.offset("yaw")
        checks.append(_check("axis_alignment", "yaw", abs(fit.yaw_offset_deg - cal_yaw),
                             profile.limit("axis_alignment", "deg"), "deg"))
    return DailyQaResult(profile, iso, tuple(checks), accuracy, repeat, tuple(steps),
                         tuple(returns), tested, calibration, home_pose, load, tuple(expected),
                         tuple(travel_list), tuple(travel_expected), fit)


def _fit_axes(steps: Sequence[QaMeasurement], returns: Sequence[QaMeasurement],
              travels: Sequence[TravelMeasurement]) -> AxisFit:
    """safety.qa_travel.fit_axes over every pure single-translation move (steps and
    travels), with the noise of one component from the returns to home."""
    moves: list[tuple[str, float, Vec3]] = []
    for m in steps:
        moved = [a for a in AXES if abs(m.commanded.get(a)) > HOME_EPSILON]
        if len(moved) == 1 and moved[0] in TRAVEL_AXES:
            a = moved[0]
            moves.append((a, m.commanded.get(a), (m.measured.lat, m.measured.long,
                                                  m.measured.vert)))
    moves += [(m.axis, m.commanded_mm, m.measured_mm) for m in travels]
    sq = [m.error.get(a) ** 2 for m in returns for a in TRAVEL_AXES]
    noise = math.sqrt(sum(sq) / len(sq)) if sq else 0.0
    return fit_axes(moves, noise)
