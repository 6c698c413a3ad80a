"""`igrtctl qa couch-sag`: the table top's sag and pitch under load, through igrtd (docs/qa.md).

Per load a baseline image at the QA home, then each couch extension (long only)
moved to, held to run and imaged with the phantom laid where that extension
brings it to the isocentre; igrtd fits the model (safety.qa_sag) at qa_finish
and stores it. This module sends the commands in order and prints the model.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from daemon.igrtctl.exits import ExitCode, err
from daemon.igrtctl.qa_link import (
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
from daemon.jsontypes import JsonObject, as_float

if TYPE_CHECKING:
    from daemon.igrtctl.links import RoomLink


async def couch_sag(a: argparse.Namespace, link: RoomLink, sim: SimRoom) -> int:
    """igrtd's sag session: per load a baseline at home, then each extension (long only)
    imaged; igrtd fits safety.qa_sag at qa_finish and stores the model."""
    say = quiet if a.json else say_line
    extensions: list[float] = a.extension_list  # checked by check_args
    loads: list[float] = a.load_list
    try:
        start = await call(link, "qa_start", kind="sag", load_kg=loads[0])
    except QaStopped as exc:
        err(str(exc))
        return exc.code
    try:
        with reading("qa_start"):
            home = read_pose(start["home"], "home") if "home" in start else await current_pose(link)
        say(f"couch sag as {link.user}: extensions {', '.join(f'{e:g}' for e in extensions)} mm,"
             f" loads {', '.join(f'{v:g}' for v in loads)} kg; imaging: simulated CBCT of the "
             f"QA phantom ({sim.control})")
        await press_pendant(link, sim, say)
        n = 0
        for load in loads:
            say(f"load {load:g} kg on the table top (sim op couch_load)")
            sim.load(load)  # the couch is at home: every extension below returns there
            # The physicist lays the phantom on the table so that each extension brings it
            # to the isocentre: at home, E mm toward the foot (sim op qa_phantom_place).
            sim.place((0.0, 0.0, 0.0))
            path = sim.acquire(n, f"sag-baseline-{load:g}kg")
            n += 1
            await call(link, "qa_image", image=path, label="baseline", load_kg=load)
            for ext in (e for e in extensions if e > 0):
                sim.place((0.0, -ext, 0.0))
                await move(link, dict(home, long=home["long"] + ext), a.rate)
                label = label_of(f"sag_{load:g}kg_{ext:g}mm")
                path = sim.acquire(n, label)
                n += 1
                where: JsonObject = ({"phantom_at_mm": [0.0, -ext, 0.0]}
                                     if _takes_phantom_at() else {})
                seen = await call(link, "qa_image", image=path, label=label, load_kg=load,
                                  **where)
                with reading("qa_image"):
                    measured = read_pose(seen.get("measured"), "measured")
                say(f"  extension {ext:5.0f} mm: vertical sag {-measured['vert']:+.2f} mm, "
                    f"pitch {-measured['pitch']:+.3f} deg")
                await move(link, home, a.rate)
        sim.place((0.0, 0.0, 0.0))
        sim.pendant(False)
        sim.load(0.0)
        result = await call(link, "qa_finish")
    except BaseException as exc:
        await abandon(link, sim, str(exc) or type(exc).__name__, unload=True)
        if isinstance(exc, QaStopped):
            err(str(exc))
            return exc.code
        raise
    return print_sag(result, a.json)


def _takes_phantom_at() -> bool:
    """Whether this igrtd's qa_image takes `phantom_at_mm` (where the phantom's centre lay at
    the QA home, room frame): the BB's home position igrtd turns the image into a couch
    delta with. Without it the sag's pitch reads as extra vertical sag (E * sin(pitch))."""
    from daemon.commands import COMMANDS

    command = COMMANDS.get("qa_image")
    return command is not None and "phantom_at_mm" in command.args.model_fields


def print_sag(result: JsonObject, as_json: bool) -> int:
    """The fitted model igrtd stored (or why there is none): OK, or REFUSED without a fit."""
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    model = result.get("sag")
    if not isinstance(model, dict):
        err(f"couch sag: no model fitted: {result.get('fit_error') or 'igrtd gave none'}")
        return ExitCode.REFUSED
    if as_json:
        return ExitCode.OK
    points = result.get("points")
    if isinstance(points, list):
        print(f"{'load kg':>8} {'ext mm':>7} {'sag mm':>8} {'pitch deg':>10}")
        for p in points:
            if isinstance(p, dict):
                with reading("qa_finish"):
                    print(f"{as_float(p.get('load_kg'), 'load_kg'):8.0f} "
                          f"{as_float(p.get('extension_mm'), 'extension_mm'):7.0f} "
                          f"{as_float(p.get('vert_sag_mm'), 'vert_sag_mm'):8.3f} "
                          f"{as_float(p.get('pitch_deg'), 'pitch_deg'):10.4f}")
    print(f"couch sag model (result {result.get('id')}): vertical sag = (a + b * load/100 kg) "
          "* extension/1 m, pitch = (c + d * load/100 kg) * extension/1 m")
    for key, unit in (("a", "mm/m"), ("b", "mm/m per 100 kg"), ("c", "deg/m"),
                      ("d", "deg/m per 100 kg"), ("rms_mm", "mm (fit residual)"),
                      ("rms_deg", "deg (fit residual)")):
        value = model.get(key)
        if isinstance(value, (int, float)):
            print(f"  {key:<8} {value:9.4f} {unit}")
    return ExitCode.OK
