"""What a rigid 3D registration returns, and the error for images that cannot be
registered at all (convention of `matrix`: see `imaging.registration`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RegistrationResult:
    matrix: np.ndarray
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    metric: float
    seconds: float
    converged: bool
    iterations: int
    quality: str
    reason: str = ""
    metric_name: str = "correlation"
    stop_condition: str = ""
    level_iterations: tuple[int, ...] = field(default_factory=tuple)

    def to_json_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "matrix": [[float(v) for v in row] for row in self.matrix],
            "translation_mm": [float(v) for v in self.translation_mm],
            "rotation_deg": [float(v) for v in self.rotation_deg],
            "metric": float(self.metric),
            "seconds": float(self.seconds),
            "converged": bool(self.converged),
            "quality": self.quality,
            "iterations": int(self.iterations),
        }
        if self.reason:
            d["reason"] = self.reason
        return d

    def summary(self, metric_label: str = "metric", metric_digits: int = 4) -> str:
        """One line for a person at the console (igrtctl register, register2d)."""
        t, r = self.translation_mm, self.rotation_deg
        return (f"translation at iso: x {t[0]:+.2f} y {t[1]:+.2f} z {t[2]:+.2f} mm; "
                f"rotation: x {r[0]:+.2f} y {r[1]:+.2f} z {r[2]:+.2f} deg; "
                f"{metric_label} {self.metric:.{metric_digits}f}; {self.seconds:.2f} s; "
                f"{'converged' if self.converged else 'REFUSED: ' + self.reason}")


class RegistrationFailed(ValueError):
    """The images could not be registered at all (e.g. they do not overlap)."""
