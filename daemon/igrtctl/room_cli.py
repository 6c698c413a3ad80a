"""The igrtctl subcommands of the room commands, built from the command registry.

Every command of daemon/commands.py is offered under its `cli` words (for
example `session open` for open_session), with the same options on the local
socket and over MQTT. `CLI` says, per command, which options it takes and how
they become the command's arguments; building the parser fails for a
registered command without an entry (tests/test_command_registry.py).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from daemon.commands import COMMANDS
from daemon.igrtctl.args import triple
from daemon.igrtctl.exits import ArgParser, UsageError
from daemon.igrtctl.registration import propose_args
from daemon.jsontypes import JsonObject

HOLD_RATE_HZ = 20.0
JOG_STEP_MS = 200
AXES = ("lat", "long", "vert", "yaw", "pitch", "roll")
# Options whose value may be a negative vector ("--iso -25,10,-15").
VECTOR_OPTIONS = frozenset({"--iso", "--couch-at-imaging", "--marker", "--target"})

Options = Callable[[argparse.ArgumentParser], None]
ArgsOf = Callable[[argparse.Namespace], JsonObject]
# The subcommands of a parser made with parser_class=ArgParser.
# (A string: the class is generic only to type checkers.)
Subcommands: TypeAlias = "argparse._SubParsersAction[ArgParser]"


def _none(_p: argparse.ArgumentParser) -> None:
    pass


def _no_args(_a: argparse.Namespace) -> JsonObject:
    return {}


@dataclass(frozen=True, slots=True)
class Cli:
    options: Options = _none
    args: ArgsOf = _no_args


def _session_open(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient", required=True)
    p.add_argument("--plan", required=True, help="RT Plan SOP Instance UID: igrtd reads the "
                   "isocentre, patient position and frame of reference from the stored plan")
    p.add_argument("--beam", help="beam (number or name) to set up for, when the plan has "
                   "several isocentres")
    p.add_argument("--manual-override", metavar="REASON",
                   help="use the typed --frame-of-reference, --iso and --patient-position "
                   "instead of the stored plan (audited with REASON)")
    p.add_argument("--frame-of-reference", help="typed: checked against the plan, or used "
                   "under --manual-override")
    p.add_argument("--iso", help="X,Y,Z mm; typed: checked against the plan, or used under "
                   "--manual-override")
    p.add_argument("--patient-position", help="HFS, FFS, ...; typed: checked against the "
                   "plan, or used under --manual-override")


def _session_args(a: argparse.Namespace) -> JsonObject:
    out: JsonObject = {"patient_id": a.patient, "plan_uid": a.plan}
    if a.beam is not None:
        out["beam"] = a.beam
    if a.manual_override is not None:
        out["manual_override"] = a.manual_override
    if a.frame_of_reference is not None:
        out["frame_of_reference_uid"] = a.frame_of_reference
    if a.iso is not None:
        out["iso"] = list(triple(a.iso, "--iso"))
    if a.patient_position is not None:
        out["patient_position"] = a.patient_position
    return out


def _imaging(p: argparse.ArgumentParser) -> None:
    p.add_argument("imaging_session")
    p.add_argument("--modality", default="CBCT")


def _propose(p: argparse.ArgumentParser) -> None:
    p.add_argument("registration", type=Path)
    p.add_argument("--iso", required=True)
    p.add_argument("--patient-position", required=True)
    p.add_argument("--patient")
    p.add_argument("--plan")
    p.add_argument("--frame-of-reference")
    p.add_argument("--imaging-session")
    p.add_argument("--acquired-at", type=float)
    p.add_argument("--axes")
    p.add_argument("--couch-at-imaging", help="LAT,LONG,VERT,YAW,PITCH,ROLL (default: recorded)")


def _register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fixed", help="planning CT as igrtd sees it (file or dir); default: "
                   "the planning CT of the session's stored plan")
    p.add_argument("--moving", required=True, help="daily image as igrtd sees it (file or dir)")
    p.add_argument("--iso", help="isocentre X,Y,Z in planning mm (default: daily image centre)")


def _register_args(a: argparse.Namespace) -> JsonObject:
    out: JsonObject = {"moving": a.moving}
    if a.fixed is not None:
        out["fixed"] = a.fixed
    if a.iso:
        out["iso"] = list(triple(a.iso, "--iso"))
    return out


def _proposal_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("proposal_id")


def _confirm(p: argparse.ArgumentParser) -> None:
    p.add_argument("proposal_id")
    p.add_argument("--no-hold", action="store_true", help="confirm only; hold later")


def _hold(p: argparse.ArgumentParser) -> None:
    p.add_argument("proposal_id")
    p.add_argument("--rate", type=float, default=HOLD_RATE_HZ, help="heartbeats per second (>= 10)")


def _pid_args(a: argparse.Namespace) -> JsonObject:
    return {"proposal_id": a.proposal_id}


def _stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default=None, help="said in the audit record")


def _jog(p: argparse.ArgumentParser) -> None:
    p.add_argument("axis", choices=AXES)
    p.add_argument("velocity", type=float, help="mm/s or deg/s, signed")
    p.add_argument("--seconds", type=float, default=1.0, help="how long to hold (max 30)")


def _jog_args(a: argparse.Namespace) -> JsonObject:
    return {"axis": a.axis, "velocity": a.velocity, "duration_ms": JOG_STEP_MS}


def _diag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, metavar="FILE",
                   help="also save a diagnostics bundle (.tar.gz)")


def _monitor_start(p: argparse.ArgumentParser) -> None:
    p.add_argument("--marker", action="append", required=True, metavar="X,Y,Z",
                   help="planned marker position, room mm (repeat for each marker)")
    p.add_argument("--target", default="0,0,0", metavar="X,Y,Z",
                   help="planned target position, room mm (default the isocentre)")
    p.add_argument("--tolerance", type=float, help="mm; may only tighten the site's")
    p.add_argument("--debounce", type=float, help="s; may only be shorter than the site's")
    p.add_argument("--release-after", type=float, help="s; may only be longer than the site's")


def _monitor_start_args(a: argparse.Namespace) -> JsonObject:
    args: JsonObject = {"markers_mm": [list(triple(m, "--marker")) for m in a.marker],
                            "target_mm": list(triple(a.target, "--target"))}
    for key, value in (("tolerance_mm", a.tolerance), ("debounce_s", a.debounce),
                       ("release_after_s", a.release_after)):
        if value is not None:
            args[key] = value
    return args


def _monitor_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release-hold", action="store_true",
                   help="also release the beam hold (audited as your decision)")
    p.add_argument("--records", action="store_true", help="include every frame's record")


def _arms(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["extend", "retract"])


def _pose6(text: str, what: str) -> JsonObject:
    """LAT,LONG,VERT,YAW,PITCH,ROLL (mm, deg) as a pose object; UsageError otherwise."""
    try:
        vals = [float(p) for p in text.split(",")]
    except ValueError:
        raise UsageError(f"{what} must be LAT,LONG,VERT,YAW,PITCH,ROLL, got {text!r}") from None
    if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{what} must be 6 finite numbers LAT,LONG,VERT (mm),YAW,PITCH,ROLL "
                         f"(deg), got {text!r}")
    return dict(zip(AXES, vals, strict=True))


def _qa_start(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["daily", "sag"], default="daily")
    p.add_argument("--profile", choices=["conventional", "srs"],
                   help="tolerance profile (default: the room's qa.profile)")
    p.add_argument("--load-kg", type=float, default=0.0, help="load on the couch")


def _qa_start_args(a: argparse.Namespace) -> JsonObject:
    out: JsonObject = {"kind": a.kind, "load_kg": a.load_kg}
    if a.profile is not None:
        out["profile"] = a.profile
    return out


def _qa_image(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="QA phantom image as igrtd sees it (file or DICOM dir)")
    p.add_argument("--label", required=True, help='"baseline" first, then e.g. lat+10, home')
    p.add_argument("--load-kg", type=float, help="load on the couch (default the session's)")


def _qa_image_args(a: argparse.Namespace) -> JsonObject:
    out: JsonObject = {"image": a.image, "label": a.label}
    if a.load_kg is not None:
        out["load_kg"] = a.load_kg
    return out


def _qa_move(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, metavar="LAT,LONG,VERT,YAW,PITCH,ROLL",
                   help="absolute couch pose (mm, deg) within the QA envelope of the home pose")


def _qa_finish(p: argparse.ArgumentParser) -> None:
    p.add_argument("--abort", metavar="REASON", help="close without a result (audited)")


def _qa_finish_args(a: argparse.Namespace) -> JsonObject:
    if a.abort is None:
        return {}
    return {"abort": True, "reason": a.abort}


def _qa_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["daily", "sag"])
    p.add_argument("--limit", type=int, default=20)


def _qa_results_args(a: argparse.Namespace) -> JsonObject:
    out: JsonObject = {"limit": a.limit}
    if a.kind is not None:
        out["kind"] = a.kind
    return out


def _reason(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (audited)")


def _qa_cal_propose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--result", type=int, help="daily QA result id (default the newest)")
    p.add_argument("--sag-result", type=int, help="couch-sag result id (default the newest)")
    p.add_argument("--reason")


def _qa_cal_propose_args(a: argparse.Namespace) -> JsonObject:
    out: JsonObject = {}
    for key, value in (("result_id", a.result), ("sag_result_id", a.sag_result),
                       ("reason", a.reason)):
        if value is not None:
            out[key] = value
    return out


def _version(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", type=int)


def _qa_cal_revert(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", type=int, help="approved version to return to; 0: none")
    p.add_argument("--reason", required=True, help="why (audited)")


def _limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=20)


CLI: dict[str, Cli] = {
    "status": Cli(),
    "interlocks": Cli(),
    "open_session": Cli(_session_open, _session_args),
    "close_session": Cli(),
    "record_imaging": Cli(_imaging, lambda a: {"imaging_session_uid": a.imaging_session,
                                               "modality": a.modality}),
    "register": Cli(_register, _register_args),
    "propose": Cli(_propose, propose_args),
    "confirm": Cli(_confirm, _pid_args),
    "approve": Cli(_proposal_id, _pid_args),
    "hold": Cli(_hold, _pid_args),
    "release": Cli(),
    "stop": Cli(_stop, lambda a: {"reason": a.reason or ""}),
    "reset": Cli(),
    "enter_service": Cli(),
    "exit_service": Cli(),
    "jog": Cli(_jog, _jog_args),
    "diag": Cli(_diag, lambda a: {"bundle": a.bundle is not None}),
    "monitor_start": Cli(_monitor_start, _monitor_start_args),
    "monitor_stop": Cli(_monitor_stop, lambda a: {"release_hold": a.release_hold,
                                                  "include_records": a.records}),
    "monitor_status": Cli(),
    "arms": Cli(_arms, lambda a: {"extend": a.action == "extend"}),
    "qa_start": Cli(_qa_start, _qa_start_args),
    "qa_image": Cli(_qa_image, _qa_image_args),
    "qa_move": Cli(_qa_move, lambda a: {"target": _pose6(a.target, "--target")}),
    "qa_finish": Cli(_qa_finish, _qa_finish_args),
    "qa_results": Cli(_qa_results, _qa_results_args),
    "qa_override": Cli(_reason, lambda a: {"reason": a.reason}),
    "qa_calibration_propose": Cli(_qa_cal_propose, _qa_cal_propose_args),
    "qa_calibration_approve": Cli(_version, lambda a: {"version": a.version}),
    "qa_calibration_revert": Cli(_qa_cal_revert, lambda a: {"version": a.version,
                                                           "reason": a.reason}),
    "qa_calibrations": Cli(_limit, lambda a: {"limit": a.limit}),
}


def add_room_commands(sub: Subcommands, common: ArgParser) -> None:
    """One subcommand per registered command, under its `cli` words.

    `sub` is the top-level subparsers object; `common` holds options every
    subcommand also accepts after its name (--json). Each leaf parser sets
    `command` to the registry name.
    """
    groups: dict[str, Subcommands] = {}
    verbs: dict[str, list[str]] = {}
    for command in COMMANDS.values():
        words = command.cli.split()
        if len(words) == 2:
            verbs.setdefault(words[0], []).append(words[1])
    for name, command in COMMANDS.items():
        spec = CLI.get(name)
        if spec is None:
            raise LookupError(f"command {name!r} has no igrtctl subcommand (room_cli.CLI)")
        words = command.cli.split()
        if len(words) == 1:
            leaf = sub.add_parser(words[0], parents=[common], help=command.help)
        else:
            group, verb = words
            if group not in groups:
                parent = sub.add_parser(group, help=f"{group} {'|'.join(verbs[group])} ...")
                groups[group] = parent.add_subparsers(dest="action", required=True,
                                                      parser_class=ArgParser)
            leaf = groups[group].add_parser(verb, parents=[common], help=command.help)
        spec.options(leaf)
        leaf.set_defaults(command=name)


def command_args(a: argparse.Namespace) -> JsonObject:
    """The registered command's arguments from the parsed options."""
    try:
        return CLI[a.command].args(a)
    except KeyError:
        raise UsageError(f"unknown command {a.command}") from None
