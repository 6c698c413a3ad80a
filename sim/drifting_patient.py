"""Where the markers of a monitored patient are: the patient's own drift, carried by
the simulated couch's true pose since monitoring began.

The simulated kV imaging system (sim/kv_stream.py) asks `room_map()` at every frame,
so a couch correction between beams moves what the frames show exactly as it moves
the patient. Used by `make demo MODE=between-beams` and the end-to-end tests of the
correction between beams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from safety.couch_model import CouchModel
from safety.geometry import pose_transform, rot_z
from sim.room import SimRoom


class DriftingPatient:
    def __init__(self, room: SimRoom, pivot: Sequence[float] | None = None) -> None:
        self.room = room
        self.pivot = tuple(CouchModel.default().pivot if pivot is None else pivot)
        self.start = room.couch_pose  # the couch when monitoring begins
        self.drift = np.eye(4)

    def set_drift(self, shift_mm: Sequence[float], yaw_deg: float = 0.0) -> None:
        """The patient turned by `yaw_deg` about the isocentre's vertical, then shifted
        (room frame, mm). Thread-safe: applied in the simulators' loop."""
        h = np.eye(4)
        h[:3, :3] = rot_z(yaw_deg)
        h[:3, 3] = np.asarray(shift_mm, dtype=float)
        self.room.call(lambda: setattr(self, "drift", h))

    def room_map(self) -> np.ndarray:
        """Room point planned -> where it is now (call in the simulators' loop)."""
        couch = pose_transform(self.room.couch.pose, self.pivot) @ np.linalg.inv(
            pose_transform(self.start, self.pivot))
        return np.asarray(couch @ self.drift)

    def target_error_mm(self, target_mm: Sequence[float]) -> float:
        """How far the planned target point is from where it belongs, now (mm)."""
        t = np.asarray(target_mm, dtype=float)
        moved = self.room.call(self.room_map) @ np.r_[t, 1.0]
        return float(np.linalg.norm(moved[:3] - t))

    def rotation_error_deg(self) -> float:
        h = self.room.call(self.room_map)
        c = (float(np.trace(h[:3, :3])) - 1.0) / 2.0
        return float(np.degrees(np.arccos(max(-1.0, min(1.0, c)))))
