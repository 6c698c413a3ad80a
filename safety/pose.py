"""Couch pose: the six axes of a robotic patient support, in mm and degrees.

Axis names follow the geometry contract (docs/geometry.md): translations of
the table top along IEC 61217 room X, Y, Z (lat, long, vert) and rotations
yaw (about vertical through the isocentre), pitch (about table-top X) and
roll (about table-top Y).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

AXES: tuple[str, ...] = ("lat", "long", "vert", "yaw", "pitch", "roll")
TRANSLATION_AXES: tuple[str, ...] = ("lat", "long", "vert")
ROTATION_AXES: tuple[str, ...] = ("yaw", "pitch", "roll")
UNITS: dict[str, str] = {
    "lat": "mm",
    "long": "mm",
    "vert": "mm",
    "yaw": "deg",
    "pitch": "deg",
    "roll": "deg",
}


@dataclass(frozen=True, slots=True)
class Pose:
    lat: float = 0.0
    long: float = 0.0
    vert: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    @classmethod
    def from_seq(cls, values: tuple[float, ...] | list[float]) -> Pose:
        if len(values) != 6:
            raise ValueError(f"a couch pose has 6 axes, got {len(values)} values")
        return cls(*(float(v) for v in values))

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Pose:
        missing = [a for a in AXES if a not in d]
        if missing:
            raise ValueError(f"couch pose is missing axes: {', '.join(missing)}")
        return cls(**{a: float(d[a]) for a in AXES})

    def as_tuple(self) -> tuple[float, float, float, float, float, float]:
        return (self.lat, self.long, self.vert, self.yaw, self.pitch, self.roll)

    def as_dict(self) -> dict[str, float]:
        # Built directly: dataclasses.asdict deep-copies field by field, ten times
        # the cost, and poses are turned into dicts on every audit record and view.
        return {"lat": self.lat, "long": self.long, "vert": self.vert,
                "yaw": self.yaw, "pitch": self.pitch, "roll": self.roll}

    def __iter__(self) -> Iterator[float]:
        return iter(self.as_tuple())

    def minus(self, other: Pose) -> Pose:
        return Pose(*(a - b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def plus(self, other: Pose) -> Pose:
        return Pose(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def get(self, axis: str) -> float:
        return float(getattr(self, axis))

    def __str__(self) -> str:
        return (
            f"lat {self.lat:.2f} mm, long {self.long:.2f} mm, vert {self.vert:.2f} mm, "
            f"yaw {self.yaw:.2f} deg, pitch {self.pitch:.2f} deg, roll {self.roll:.2f} deg"
        )
