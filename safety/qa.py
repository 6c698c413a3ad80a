"""Daily couch and imaging QA (AAPM TG-142): from measurements to a pass/fail result.

The daily QA (issue 16) images a phantom with a BB: a baseline CBCT at the QA
home pose, then one CBCT after each move of the daily pattern (`qa_pattern`:
every axis +step, home, -step, home). Each later image is registered rigidly
to the baseline, which gives how the table top moved (`room_shift_from_registration`,
`couch_motion_from_registration`); the BB in the baseline gives where the
imaging isocentre is relative to the treatment isocentre (`iso_offset_from_bb`).
`evaluate_daily` then checks, against a TG-142 profile (safety.qa_tolerances):

* iso_coincidence (axis "vector"): length of the imaging-iso offset, mm;
* positioning (each axis): max over the steps of |measured - commanded|;
* repeatability (each axis): max over the returns to home of |measured - commanded|
  (commanded is home, 0).

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

import numpy as np

from safety.correction import validate_registration_matrix
from safety.geometry import (
    PatientPosition,
    decompose_rotation,
    orientation_matrix,
    pose_rotation,
    pose_transform,
    rot_z,
    rotation_from_angles,
)
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose
from safety.qa_tolerances import PROFILES, Profile, finite_number, resolve_profile

if TYPE_CHECKING:  # safety.qa_calibration imports this module; at run time: imported late
    from safety.qa_calibration import Calibration

__all__ = [
    "Check",
    "DailyQaResult",
    "QaMeasurement",
    "RigidFit",
    "couch_delta_from_room_shift",
    "couch_motion_from_registration",
    "evaluate_daily",
    "iso_offset_from_bb",
    "qa_pattern",
    "rigid_fit",
    "room_shift_for_couch_delta",
    "room_shift_from_registration",
]

Vec3 = tuple[float, float, float]

# A return is "at home" when its commanded delta is 0 within this (mm or deg).
HOME_EPSILON = 1e-6
CHECK_NAMES = ("iso_coincidence", "positioning", "repeatability")


def _clean(v: float) -> float:
    # As safety.correction: 1e-9 mm/deg matters for no tolerance; -0.0 reads as 0.0.
    return round(v, 9) + 0.0


def _vec3(value: Any, field_name: str, unit: str = "mm") -> Vec3:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"{field_name} must be 3 numbers (x, y, z {unit}), got {value!r}")
    if len(value) != 3:
        raise ValueError(f"{field_name} must be 3 numbers (x, y, z {unit}), got {len(value)}")
    x, y, z = (finite_number(v, f"{field_name} {k}", unit) for k, v in zip("xyz", value))
    return (x, y, z)


def _pose(value: Any, field_name: str) -> Pose:
    """A Pose from a Pose, a dict of the six axes or six numbers; every axis finite."""
    if isinstance(value, Pose):
        pose = value
    elif isinstance(value, Mapping):
        missing = [a for a in AXES if a not in value]
        if missing:
            raise ValueError(f"{field_name} is missing axes: {', '.join(missing)}")
        extra = sorted(set(value) - set(AXES))
        if extra:
            raise ValueError(f"{field_name} has unknown axes: {', '.join(map(str, extra))}")
        pose = Pose(**{a: finite_number(value[a], f"{field_name} {a}", UNITS[a]) for a in AXES})
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        if len(value) != 6:
            raise ValueError(
                f"{field_name} must be 6 numbers (lat, long, vert mm, yaw, pitch, roll deg), "
                f"got {len(value)}")
        pose = Pose(*(finite_number(v, f"{field_name} {a}", UNITS[a]) for a, v in zip(AXES, value)))
    else:
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"{field_name} must be a couch pose, got {type(value).__name__}")
    for a in AXES:
        finite_number(pose.get(a), f"{field_name} {a}", UNITS[a])
    return pose


def _wrap_deg(d: float) -> float:
    """An angle difference in (-180, 180]."""
    w = math.fmod(d, 360.0)
    if w > 180.0:
        w -= 360.0
    elif w <= -180.0:
        w += 360.0
    return w


def _pose_json(p: Pose) -> dict[str, float]:
    return {a: _clean(v) for a, v in p.as_dict().items()}


# --------------------------------------------------------------------------- geometry


def room_shift_from_registration(
    matrix: Any, patient_position: PatientPosition | str, centre_mm: Sequence[float],
) -> Pose:
    """How the table top moved between the baseline and a later image, in the room.

    `matrix`: rigid 4x4 ITK fixed -> moving, fixed = baseline image, moving = the later
    image, both DICOM LPS (the phantom material at baseline point q is at T(q) in the
    later image). `centre_mm`: the point whose translation is reported (the BB or the
    phantom centre), in the baseline image's DICOM frame.

    Returns lat, long, vert = M (T(c) - c), the translation of that point along IEC
    X, Y, Z (mm), and yaw, pitch, roll = the rotation M R M^T decomposed as
    Rz(yaw) Rx(pitch) Ry(roll) (deg). An imaging-iso offset cancels (it shifts both
    images alike).
    """
    t = validate_registration_matrix(matrix)
    m = orientation_matrix(patient_position)
    c = np.array(_vec3(centre_mm, "centre_mm"))
    moved = t[:3, :3] @ c + t[:3, 3]
    s = m @ (moved - c)
    yaw, pitch, roll = decompose_rotation(m @ t[:3, :3] @ m.T)
    return Pose(float(s[0]), float(s[1]), float(s[2]), yaw, pitch, roll)


def couch_delta_from_room_shift(
    shift: Pose | Sequence[float], home: Pose, pivot_mm: Sequence[float],
    centre_room_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Pose:
    """The couch delta (relative to `home`) whose move produces the measured room motion.

    `shift` is a room shift (see the module doc) of the point that sat at room point
    `centre_room_mm` at the home pose. The motion D(r) = R (r - p) + p + s is composed
    with the home pose: F_new = D o F_home (docs/geometry.md kinematics, pivot
    `pivot_mm`), and F_new decomposed into a pose. An error of a few mm in
    `centre_room_mm` changes the result by that times sin(rotation): negligible.
    """
    sh = _pose(shift, "room shift")
    home = _pose(home, "home pose")
    c = np.array(_vec3(pivot_mm, "pivot_mm"))
    p = np.array(_vec3(centre_room_mm, "centre_room_mm"))
    r_d = rotation_from_angles(sh.yaw, sh.pitch, sh.roll)
    s = np.array([sh.lat, sh.long, sh.vert])
    yaw, pitch, roll = decompose_rotation(r_d @ pose_rotation(home))
    f0 = pose_transform(home, c)
    r0 = f0[:3, :3] @ c + f0[:3, 3]  # where the pivot is at the home pose
    moved = r_d @ (r0 - p) + p + s
    t = rot_z(yaw).T @ moved - c  # F_P(c) = Rz(yaw) (c + t)
    return Pose(
        float(t[0]) - home.lat, float(t[1]) - home.long, float(t[2]) - home.vert,
        _wrap_deg(yaw - home.yaw), _wrap_deg(pitch - home.pitch), _wrap_deg(roll - home.roll),
    )


def room_shift_for_couch_delta(
    delta: Pose, home: Pose, pivot_mm: Sequence[float],
    centre_room_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Pose:
    """The room shift (of the point at `centre_room_mm` at home) that moving the couch
    from `home` by `delta` produces: the inverse of `couch_delta_from_room_shift`."""
    delta = _pose(delta, "couch delta")
    home = _pose(home, "home pose")
    c = np.array(_vec3(pivot_mm, "pivot_mm"))
    p = np.array(_vec3(centre_room_mm, "centre_room_mm"))
    f0 = pose_transform(home, c)
    f1 = pose_transform(home.plus(delta), c)
    d = f1 @ np.linalg.inv(f0)
    s = d[:3, :3] @ p + d[:3, 3] - p
    yaw, pitch, roll = decompose_rotation(d[:3, :3])
    return Pose(float(s[0]), float(s[1]), float(s[2]), yaw, pitch, roll)


def couch_motion_from_registration(
    matrix: Any, patient_position: PatientPosition | str, centre_mm: Sequence[float], *,
    centre_room_mm: Sequence[float], home: Pose, pivot_mm: Sequence[float],
) -> Pose:
    """`room_shift_from_registration` turned into the couch delta relative to `home`
    (`couch_delta_from_room_shift`): what `evaluate_daily` compares with the commanded
    delta. `centre_room_mm` is the room position of `centre_mm` at home (the BB's,
    e.g. from the baseline image)."""
    shift = room_shift_from_registration(matrix, patient_position, centre_mm)
    return couch_delta_from_room_shift(shift, home, pivot_mm, centre_room_mm)


def iso_offset_from_bb(
    bb_image_mm: Sequence[float], expected_bb_room_mm: Sequence[float],
    patient_position: PatientPosition | str = PatientPosition.HFS,
    image_iso_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Vec3:
    """Where the imaging isocentre is relative to the treatment isocentre (room X, Y, Z,
    mm), from the BB found in the baseline image.

    The image is labelled as if centred on the treatment isocentre (`image_iso_mm` is
    the treatment isocentre in image coordinates), so room point r appears at image
    point M^-1 (r - o) + iso: offset o = expected BB room position - M (bb - iso).
    """
    m = orientation_matrix(patient_position)
    bb = np.array(_vec3(bb_image_mm, "bb_image_mm"))
    expected = np.array(_vec3(expected_bb_room_mm, "expected_bb_room_mm"))
    iso = np.array(_vec3(image_iso_mm, "image_iso_mm"))
    o = expected - m @ (bb - iso)
    return (float(o[0]), float(o[1]), float(o[2]))


# Fiducials of a QA phantom are found to ~0.05 mm; a residual above this means one of them
# was misfound (another dark or bright spot), not noise.
RIGID_FIT_MAX_RMS_MM = 0.5


@dataclass(frozen=True)
class RigidFit:
    """`rigid_fit`'s answer: `matrix` (4x4, maps points_from onto points_to), the residual
    RMS and the largest residual (mm) of the points after the fit."""

    matrix: np.ndarray
    rms_mm: float
    max_residual_mm: float


def rigid_fit(points_from: Any, points_to: Any, *,
              max_rms_mm: float = RIGID_FIT_MAX_RMS_MM) -> RigidFit:
    """The least-squares rigid motion T (rotation and translation, no scale, no
    reflection: Kabsch/Umeyama) with T(points_from[i]) ~ points_to[i].

    For a QA image: points_from = the fiducials (BB, air holes) in the baseline image,
    points_to = the same fiducials in the later image (DICOM LPS, mm), so `matrix` is the
    ITK fixed -> moving matrix `room_shift_from_registration` takes. At least 3 points,
    not all on one line. ValueError (one line) when the residual RMS exceeds
    `max_rms_mm` (a fiducial was misfound or the phantom deformed)."""
    def points(value: Any, name: str) -> np.ndarray:
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"{name} must be a list of points (x, y, z mm), got {type(value).__name__}")
        return np.array([_vec3(v, f"{name}[{i}]") for i, v in enumerate(value)], dtype=float)

    a = points(points_from, "points_from")
    b = points(points_to, "points_to")
    limit = finite_number(max_rms_mm, "max_rms_mm", "mm")
    if a.shape != b.shape:
        raise ValueError(f"rigid_fit needs as many points_to as points_from, got {len(b)} and "
                         f"{len(a)}")
    if len(a) < 3:
        raise ValueError(f"rigid_fit needs at least 3 points, got {len(a)}")
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    da, db = a - ca, b - cb
    # Degenerate: all points on one line (the rotation about it is undetermined).
    sv = np.linalg.svd(da, compute_uv=False)
    if not sv[1] > 1e-6 * max(float(sv[0]), 1.0):
        raise ValueError("rigid_fit: the points_from lie on one line (or coincide): the "
                         "rotation is undetermined")
    u, _, vt = np.linalg.svd(db.T @ da)
    d = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    r = u @ d @ vt
    t = cb - r @ ca
    matrix = np.eye(4)
    matrix[:3, :3] = r
    matrix[:3, 3] = t
    res = np.linalg.norm(a @ r.T + t - b, axis=1)
    rms = float(np.sqrt(np.mean(res * res)))
    worst = float(res.max())
    if not rms <= limit:
        k = int(np.argmax(res))
        raise ValueError(
            f"rigid fit of {len(a)} fiducials refused: residual RMS {rms:.2f} mm exceeds "
            f"{limit:g} mm (point {k} off by {worst:.2f} mm: misfound?)")
    return RigidFit(matrix, rms, worst)


# --------------------------------------------------------------------------- pattern


def qa_pattern(step_mm: float = 10.0, step_deg: float = 1.0,
               axes: Sequence[str] = AXES) -> list[Pose]:
    """The daily pattern, relative to the QA home pose: for each axis +step, home,
    -step, home (translations by `step_mm`, rotations by `step_deg`)."""
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
    return out


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
        object.__setattr__(self, "commanded", _pose(self.commanded, "commanded"))
        object.__setattr__(self, "measured", _pose(self.measured, "measured"))
        if not isinstance(self.label, str):
            raise ValueError(f"measurement label must be text, got {self.label!r}")  # noqa: TRY004

    @property
    def error(self) -> Pose:
        return self.measured.minus(self.commanded)

    @property
    def at_home(self) -> bool:
        return all(abs(v) <= HOME_EPSILON for v in self.commanded)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "commanded": _pose_json(self.commanded),
                "measured": _pose_json(self.measured), "error": _pose_json(self.error)}

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
        return {"name": self.name, "axis": self.axis, "value": _clean(self.value),
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
            "iso_offset_mm": [_clean(v) for v in self.iso_offset_mm],
            "iso_offset_norm_mm": _clean(self.iso_offset_norm_mm),
            "iso_offset_residual_mm": [_clean(v) for v in self.iso_offset_residual_mm],
            "iso_offset_residual_norm_mm": _clean(math.hypot(*self.iso_offset_residual_mm)),
            "calibration_version": self.calibration_version,
            "calibration": None if self.calibration is None else {
                "calibration": self.calibration.to_json(), "home": _pose_json(self.home),
                "load_kg": self.load_kg},
            "accuracy": {a: _clean(v) for a, v in self.accuracy.items()},
            "repeatability": {a: _clean(v) for a, v in self.repeatability.items()},
            "units": dict(UNITS),
            "axes_tested": list(self.axes_tested),
            "steps": [self._step_json(i, m) for i, m in enumerate(self.steps)],
            "returns": [m.to_json() for m in self.returns],
        }

    def _step_json(self, i: int, m: QaMeasurement) -> dict[str, Any]:
        out = m.to_json()
        if self.calibration is not None:  # the calibrated prediction and what is left
            out["expected"] = _pose_json(self.expected[i])
            out["residual"] = _pose_json(m.measured.minus(self.expected[i]))
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
        iso: Any = d.get("iso_offset_mm")
        applied = d.get("calibration")
        if applied is None:
            return evaluate_daily(iso, steps, returns, profile)
        from safety.qa_calibration import Calibration  # late: it imports this module

        if not isinstance(applied, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
                f"a stored QA calibration must be an object, got {type(applied).__name__}")
        cal = Calibration.from_json(applied.get("calibration") or {})
        home: Any = applied.get("home", Pose())
        load: Any = applied.get("load_kg", 0.0)
        return evaluate_daily(iso, steps, returns, profile, cal,
                              home=_pose(home, "calibration home"), load_kg=load)


def evaluate_daily(
    iso_offset_mm: Sequence[float],
    steps: Sequence[QaMeasurement],
    returns: Sequence[QaMeasurement],
    profile: Profile | str = "conventional",
    calibration: Calibration | None = None,
    *,
    home: Pose | None = None,
    load_kg: float = 0.0,
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
    exactly the verdict without a calibration."""
    if isinstance(profile, str):
        profile = resolve_profile(profile)
    elif not isinstance(profile, Profile):
        raise ValueError(  # noqa: TRY004
            f"profile must be a Profile or one of {', '.join(PROFILES)}, got {profile!r}")
    iso = _vec3(iso_offset_mm, "iso_offset_mm")
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

    home_pose = Pose() if home is None else _pose(home, "home pose")
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
    return DailyQaResult(profile, iso, tuple(checks), accuracy, repeat, tuple(steps),
                         tuple(returns), tested, calibration, home_pose, load, tuple(expected))
