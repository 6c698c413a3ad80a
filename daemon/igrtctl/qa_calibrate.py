"""`igrtctl qa calibrate`: propose, approve or revert a calibration through igrtd (docs/qa.md).

igrtd computes the proposal from the stored QA results and keeps the two-person
rule (the approver is not the proposer); this module sends one command and
prints what igrtd answered.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from daemon.igrtctl.exits import ExitCode, err
from daemon.igrtctl.qa_link import QaStopped, call
from daemon.jsontypes import JsonMapping, JsonObject

if TYPE_CHECKING:
    from daemon.igrtctl.links import RoomLink


async def calibrate(a: argparse.Namespace, link: RoomLink) -> int:
    try:
        if a.approve is not None:
            result = await call(link, "qa_calibration_approve", version=a.approve)
            verb = f"calibration {a.approve} approved by {link.user}: active"
        elif a.revert is not None:
            result = await call(link, "qa_calibration_revert", version=a.revert,
                                reason=a.reason)
            verb = f"calibration {a.revert} active again (reverted by {link.user})"
        else:
            extra: JsonObject = {} if a.reason is None else {"reason": a.reason}
            result = await call(link, "qa_calibration_propose", **extra)
            verb = ""
    except QaStopped as exc:
        err(str(exc))
        return exc.code
    if a.json:
        print(json.dumps(result, indent=2, default=str))
        return ExitCode.OK
    if verb:
        print(verb)
        return ExitCode.OK
    cal = result.get("calibration") if isinstance(result.get("calibration"), dict) else result
    assert isinstance(cal, dict)
    version = cal.get("version", result.get("version", "?"))
    print(f"proposed calibration version {version} (by {link.user}; not applied):")
    print("\n".join(calibration_lines(cal)))
    print(f"to apply it a second physicist runs: igrtctl --user OTHER qa calibrate "
          f"--approve {version}")
    return ExitCode.OK


def calibration_lines(cal: JsonMapping) -> list[str]:
    out = []
    iso = cal.get("imaging_iso_offset_mm")
    if isinstance(iso, list) and len(iso) == 3:
        out.append("  imaging isocentre offset: " + ", ".join(
            f"{ax} {v:+.3f} mm" for ax, v in zip("xyz", iso) if isinstance(v, (int, float))))
    for key, title, unit in (("axis_scale", "axis scale", ""), ("axis_offset", "axis offset", "")):
        values = cal.get(key)
        if isinstance(values, dict) and values:
            out.append(f"  {title}: " + ", ".join(
                f"{ax} {v:+.5f}{unit}" for ax, v in values.items() if isinstance(v, (int, float))))
    sag = cal.get("sag")
    if isinstance(sag, dict):
        out.append("  couch sag: " + ", ".join(
            f"{k} {v:.4f}" for k, v in sag.items() if isinstance(v, (int, float))))
    return out or ["  (no correction: the QA results are within what calibration corrects)"]
