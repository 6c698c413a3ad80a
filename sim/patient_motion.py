"""The simulated patient and gantry of a stood-up room: the truth a client checks against.

The patient lies with a set-up error (a `PatientWorld`: where the anatomy is
at any couch pose) and moves on top of it: breathing (sim/intrafraction.py's
cos^4 model, along room Y) plus a steady drift, both counted from when they
were last set. The kV imager streams exactly this displacement.

The gantry angle is kept here only: the room PLC's gantry register is a
separate issue, so igrtd does not see it yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.intrafraction import Breathing
from sim.world import PatientWorld

Vec3 = tuple[float, float, float]


@dataclass
class PatientMotion:
    iso: Vec3
    patient_position: str
    setup_error: Pose
    breathing_amplitude_mm: float = 0.0
    breathing_period_s: float = 4.0
    drift_mm_s: Vec3 = (0.0, 0.0, 0.0)
    gantry_angle_deg: float = 0.0
    world: PatientWorld = field(init=False)
    _drift_t0: float = field(init=False, default_factory=time.monotonic)
    _breath_t0: float = field(init=False, default_factory=time.monotonic)
    _drift_base: np.ndarray = field(init=False, default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.place(Pose(), self.setup_error)

    def place(self, couch: Pose, setup_error: Pose) -> None:
        """The patient lies so that `couch + setup_error` would treat them exactly."""
        self.setup_error = setup_error
        pivot = tuple(CouchModel.default().pivot)
        self.world = PatientWorld.with_setup_error(
            self.iso, self.patient_position, (float(pivot[0]), float(pivot[1]), float(pivot[2])),
            couch.plus(setup_error))

    def set_drift(self, drift_mm_s: Vec3, now: float | None = None) -> None:
        # Keep what has drifted so far: a new rate continues from where the patient is.
        now = time.monotonic() if now is None else now
        self._drift_base = self._drift(now)
        self._drift_t0 = now
        self.drift_mm_s = drift_mm_s

    def set_breathing(self, amplitude_mm: float, period_s: float) -> None:
        self.breathing_amplitude_mm = amplitude_mm
        self.breathing_period_s = period_s
        self._breath_t0 = time.monotonic()

    def _drift(self, now: float) -> np.ndarray:
        return self._drift_base + (now - self._drift_t0) * np.asarray(self.drift_mm_s)

    def displacement(self, now: float | None = None) -> Vec3:
        """Target displacement in the room (mm) from breathing and drift, at `now`."""
        now = time.monotonic() if now is None else now
        d = self._drift(now)
        if self.breathing_amplitude_mm > 0:
            b = Breathing(self.breathing_amplitude_mm, self.breathing_period_s)
            d = d + b.displacement(np.array([now - self._breath_t0]))[0]
        return (float(d[0]), float(d[1]), float(d[2]))

    def truth(self, couch: Pose) -> dict[str, object]:
        return {
            "iso_mm": list(self.iso),
            "patient_position": self.patient_position,
            "setup_error": self.setup_error.as_dict(),
            "residual": self.world.residual(couch).as_dict(),
            "displacement_mm": list(self.displacement()),
            "breathing": {"amplitude_mm": self.breathing_amplitude_mm,
                          "period_s": self.breathing_period_s},
            "drift_mm_s": list(self.drift_mm_s),
        }
