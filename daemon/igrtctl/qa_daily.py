"""`igrtctl qa daily`: the daily QA run through igrtd, and its result as a table (docs/qa.md).

The phantom is imaged at the QA home (the BB: igrtd's imaging isocentre offset),
then the couch moves through the daily pattern (safety.qa.qa_pattern), each
pose held to run and imaged; igrtd judges the run at qa_finish and stores it.
This module only sends the commands in order and prints igrtd's verdict.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.igrtctl.exits import ExitCode, err
from daemon.igrtctl.qa_link import (
    AXES,
    ROTATIONS,
    QaStopped,
    SimRoom,
    abandon,
    call,
    current_pose,
    label_of,
    move,
    press_pendant,
    quiet,
    read_pose,
    reading,
    say_line,
)
from daemon.jsontypes import (
    JsonMapping,
    JsonObject,
    as_bool,
    as_float,
    as_list,
    as_object,
    as_str,
)

if TYPE_CHECKING:
    from daemon.igrtctl.links import RoomLink


def _describe_step(rel: dict[str, float]) -> str:
    moved = [(ax, v) for ax, v in rel.items() if abs(v) > 1e-9]
    if not moved:
        return "home"
    return " ".join(f"{ax} {v:+g} {'deg' if ax in ROTATIONS else 'mm'}" for ax, v in moved)


def daily_pattern(step_mm: float, step_deg: float,
                  travel_mm: float = 0.0) -> list[dict[str, float]]:
    """The daily pattern relative to the QA home (safety.qa.qa_pattern), with the travel
    part when `travel_mm` > 0."""
    from safety.qa import qa_pattern

    return [{ax: float(getattr(p, ax)) for ax in AXES}
            for p in qa_pattern(step_mm, step_deg, travel_mm=travel_mm)]


async def daily(a: argparse.Namespace, link: RoomLink, sim: SimRoom) -> int:
    """The whole daily QA, printed; exit OK when it passed, REFUSED when it failed or stopped."""
    started = time.monotonic()
    try:
        result = await daily_run(a, link, sim)
    except QaStopped as exc:
        err(str(exc))
        return exc.code
    return print_result(result, a.json, f"daily QA ({time.monotonic() - started:.0f} s)")


async def daily_run(a: argparse.Namespace, link: RoomLink, sim: SimRoom) -> JsonObject:
    """qa_start, the baseline, each pose of the pattern moved to (held to run) and imaged,
    qa_finish: igrtd's result. QaStopped (after abandoning the run) when it cannot go on."""
    say = quiet if a.json else say_line  # --json: stdout is the result's JSON only
    pattern = daily_pattern(a.step_mm, a.step_deg, a.travel_mm)
    start_args: JsonObject = {"kind": "daily"}
    if a.profile is not None:
        start_args["profile"] = a.profile
    start = await call(link, "qa_start", **start_args)
    try:
        with reading("qa_start"):
            home = read_pose(start["home"], "home") if "home" in start else await current_pose(link)
        say(f"daily QA as {link.user}: {len(pattern)} poses; imaging: simulated CBCT of the "
             f"QA phantom ({sim.control})")
        path = sim.acquire(0, "baseline")
        found = await call(link, "qa_image", image=path, label="baseline")
        say(f" 0/{len(pattern)} home: baseline imaged{_bb_text(found)}")
        await press_pendant(link, sim, say)
        for k, rel in enumerate(pattern, start=1):
            target = {ax: home[ax] + rel[ax] for ax in AXES}
            desc = _describe_step(rel)
            t0 = time.monotonic()
            await move(link, target, a.rate)
            t_move = time.monotonic() - t0
            path = sim.acquire(k, desc)
            seen = await call(link, "qa_image", image=path, label=label_of(desc))
            say(f"{k:2d}/{len(pattern)} {desc:<16} moved in {t_move:4.1f} s, imaged"
                 f"{_shift_text(seen)}")
        sim.pendant(False)
        return await call(link, "qa_finish")
    except BaseException as exc:
        await abandon(link, sim, str(exc) or type(exc).__name__)
        raise


def _xyz(value: object) -> str | None:
    if isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"({value[0]:+.2f}, {value[1]:+.2f}, {value[2]:+.2f}) mm"
    return None


def _bb_text(reply: JsonMapping) -> str:
    bb, iso = _xyz(reply.get("bb_mm")), _xyz(reply.get("iso_offset_mm"))
    return ((f", BB found at {bb} (room)" if bb else "")
            + (f", imaging isocentre offset {iso}" if iso else ""))


def _shift_text(reply: JsonMapping) -> str:
    """What imaging measured, as a couch delta from home (comparable with the command)."""
    measured = reply.get("measured")
    if not isinstance(measured, dict):
        return ""
    values: list[float] = []
    for ax in AXES:
        v = measured.get(ax)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return ""
        values.append(float(v))
    t = " ".join(f"{ax} {v:+.2f}" for ax, v in zip(AXES[:3], values[:3]))
    r = " ".join(f"{ax} {v:+.2f}" for ax, v in zip(AXES[3:], values[3:]))
    return f": measured {t} mm, {r} deg"


# ------------------------------------------------------------------ result table
@dataclass(frozen=True, slots=True)
class CheckLine:
    name: str
    axis: str
    value: float
    limit: float
    unit: str
    passed: bool


def read_checks(result: JsonMapping, cmd: str = "qa_finish") -> tuple[bool, list[CheckLine]]:
    """(passed, checks) of a QA result as igrtd answers it (top level or under `result`)."""
    with reading(cmd):
        body = as_object(result.get("result"), "result") if isinstance(
            result.get("result"), dict) else as_object(dict(result), "result")
        lines = []
        for k, raw in enumerate(as_list(body.get("checks"), "checks")):
            c = as_object(raw, f"checks[{k}]")
            lines.append(CheckLine(as_str(c.get("name"), f"checks[{k}].name"),
                                   as_str(c.get("axis"), f"checks[{k}].axis"),
                                   as_float(c.get("value"), f"checks[{k}].value"),
                                   as_float(c.get("limit"), f"checks[{k}].limit"),
                                   as_str(c.get("unit"), f"checks[{k}].unit"),
                                   as_bool(c.get("passed"), f"checks[{k}].passed")))
        passed_raw = result.get("passed", body.get("passed"))
        passed = as_bool(passed_raw, "passed") if passed_raw is not None else all(
            c.passed for c in lines)
    return passed, lines


def table(lines: Sequence[CheckLine]) -> list[str]:
    out = [f"{'check':<24} {'axis':<6} {'value':>9} {'limit':>8} {'unit':<4} verdict"]
    for c in lines:
        out.append(f"{c.name:<24} {c.axis:<6} {c.value:9.3f} {c.limit:8.3f} {c.unit:<4} "
                   f"{'PASS' if c.passed else 'FAIL'}")
    return out


def iso_offset_line(result: JsonMapping, lines: Sequence[CheckLine]) -> str | None:
    """The imaging-vs-treatment isocentre offset per axis (its length is the checked value)."""
    iso = result.get("iso_offset_mm")
    if not (isinstance(iso, list) and len(iso) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in iso)):
        return None
    vector = next((c for c in lines if c.name == "iso_coincidence"), None)
    tail = f" (length {vector.value:.3f} mm, limit {vector.limit:.3f} mm)" if vector else ""
    return ("imaging isocentre offset from the treatment isocentre: "
            + ", ".join(f"{ax} {v:+.3f}" for ax, v in zip("xyz", iso)) + f" mm{tail}")


def axis_fit_line(result: JsonMapping) -> str | None:
    """The couch's fitted translation scales and yaw offset (safety.qa_travel), if any."""
    fit = result.get("axis_fit")
    if not isinstance(fit, dict):
        return None
    scale, se = fit.get("scale"), fit.get("scale_se")
    parts: list[str] = []
    if isinstance(scale, dict) and isinstance(se, dict):
        for ax in ("lat", "long", "vert"):
            s, e = scale.get(ax), se.get(ax)
            if isinstance(s, (int, float)) and isinstance(e, (int, float)):
                parts.append(f"{ax} scale {s * 100:+.2f} +- {e * 100:.2f} %")
    yaw, yaw_se = fit.get("yaw_offset_deg"), fit.get("yaw_offset_se_deg")
    if isinstance(yaw, (int, float)) and isinstance(yaw_se, (int, float)):
        parts.append(f"yaw offset {yaw:+.3f} +- {yaw_se:.3f} deg")
    return ("couch axes (measured/commanded - 1; translations' turn): " + ", ".join(parts)
            if parts else None)


def print_result(result: JsonObject, as_json: bool, title: str) -> int:
    passed, lines = read_checks(result)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        profile = result.get("profile")
        if isinstance(profile, dict):
            profile = profile.get("name")
        print(f"{title}: result {result.get('id', '?')}, profile {profile or '?'}")
        iso = iso_offset_line(result, lines)
        if iso is not None:
            print(iso)
        axes = axis_fit_line(result)
        if axes is not None:
            print(axes)
        print("\n".join(table(lines)))
        failed = [c for c in lines if not c.passed]
        print(f"QA {'PASSED' if passed else 'FAILED'}"
              + (f": {len(failed)} of {len(lines)} checks beyond tolerance" if failed else "")
              + ("" if passed else "; clinical corrections are refused until a daily QA "
                 "passes (or a physicist overrides for a session)"))
    return ExitCode.OK if passed else ExitCode.REFUSED
