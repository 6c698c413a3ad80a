"""How far a QA move may go from the QA home pose (docs/qa.md).

A daily QA move stays within the QA envelope (`qa.envelope_mm`, `qa.envelope_deg`), or
is a travel: one translation alone, beyond the envelope and at most `qa.travel_mm`
(safety.qa_travel). A couch-sag move changes long only, toward the gantry, at most
`qa.sag_max_extension_mm`. Every refusal names the value, the limit and the unit.
"""

from __future__ import annotations

from daemon.config_sections import QaConfig
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose
from safety.qa_travel import TRAVEL_AXES

# A couch-sag move changes long only: the other axes stay at home within this.
SAG_OTHER_AXES_TOLERANCE = 0.01
# A commanded pose within this of the home pose (mm, deg) is the home pose (safety.qa).
HOME_EPSILON = 1e-6


def envelope_refusals(kind: str, target: Pose, home: Pose, cfg: QaConfig) -> list[str]:
    """Why a QA move to `target` is outside the QA envelope of `home` (value, limit, unit
    named); [] when inside. Written "not <=" so that NaN refuses."""
    out: list[str] = []
    for axis in AXES:
        d = target.get(axis) - home.get(axis)
        unit = UNITS[axis]
        if kind == "sag":
            if axis == "long":
                lim = cfg.sag_max_extension_mm
                if not (d >= 0.0 and d <= lim):
                    out.append(f"long {d:+.2f} mm from the QA home pose is outside the couch-sag "
                               f"range 0..{lim:g} mm")
            elif not abs(d) <= SAG_OTHER_AXES_TOLERANCE:
                out.append(f"{axis} {d:+.3f} {unit} from the QA home pose: a couch-sag move "
                           f"changes long only (limit {SAG_OTHER_AXES_TOLERANCE:g} {unit})")
            continue
        lim = cfg.envelope_deg if axis in ROTATION_AXES else cfg.envelope_mm
        if not abs(d) <= lim and not (kind == "daily" and travel_axis(target, home, cfg) == axis):
            out.append(f"{axis} {d:+.2f} {unit} from the QA home pose exceeds the QA envelope "
                       f"{lim:g} {unit}" + (f" (a travel moves one translation alone, at most "
                                            f"{cfg.travel_mm:g} mm)"
                                            if unit == "mm" and cfg.travel_mm > 0 else ""))
    return out


def travel_axis(target: Pose, home: Pose, cfg: QaConfig) -> str | None:
    """The axis of a travel move (safety.qa_travel): one translation alone beyond the QA
    envelope and at most `qa.travel_mm` from home, every other axis at home; else None.
    Written "<=" so that NaN is no travel."""
    d = target.minus(home)
    moved = [a for a in AXES if not abs(d.get(a)) <= HOME_EPSILON]
    if len(moved) != 1 or moved[0] not in TRAVEL_AXES:
        return None
    v = abs(d.get(moved[0]))
    return moved[0] if cfg.envelope_mm < v <= cfg.travel_mm else None
