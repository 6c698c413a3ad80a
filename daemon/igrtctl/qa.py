"""`igrtctl qa daily | couch-sag | calibrate | report`: daily QA and commissioning (docs/qa.md).

    igrtctl --user bob qa daily --imaging sim --run-dir RUN [--profile srs]
    igrtctl --user bob qa couch-sag --imaging sim --run-dir RUN --extensions 0,200,400,600 \\
            --loads 0,80,150
    igrtctl --user bob qa calibrate                 # propose corrections from the QA results
    igrtctl --user carol qa calibrate --approve 3   # a second physicist applies version 3
    igrtctl --user bob qa report --out qa-report    # index.html + trend-<axis>.png

These tools only orchestrate: every measurement, every move and every verdict
is igrtd's, through its registered commands (qa_start, qa_image, qa_move,
qa_finish, qa_results, qa_calibration_*), so a QA move passes the MotionGate
with every check a clinical move passes (interlocks, limits, freshness,
hold-to-run, the PLC pendant) and is verified. igrtctl sends the hold-to-run
heartbeats as `igrtctl hold` does; with `--imaging sim` it also presses the
simulated room's motion-enable pendant (a sim op, said on the terminal) and
acquires the phantom's CBCTs through the simulated room's control socket
(op acquire_cbct, subject qa_phantom): the one imaging source of this release.

The other `igrtctl qa ...` words (start, image, move, finish, results, ...)
are igrtd's commands one at a time, generated from the registry like every
room command (room_cli.py).

Exit status: 0 the QA passed (or the command was done), 1 the QA failed or
igrtd refused (a failed QA also refuses clinical moves while the gate is on),
2 unusable input, 4 igrtd or the simulated room unreachable (exits.py).

This module is the entry point (the options, what can be refused before igrtd
is reached, and which tool runs); each tool is its own module (qa_daily,
qa_sag, qa_calibrate, qa_report_tool), sharing qa_link's way to igrtd and to
the simulated room.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import math
import os
from collections.abc import Sequence
from pathlib import Path

from daemon.igrtctl.exits import EXIT_CODES_HELP, ArgParser, UsageError
from daemon.igrtctl.qa_calibrate import calibrate
from daemon.igrtctl.qa_daily import daily
from daemon.igrtctl.qa_link import SIM_SOCKET_ENV, SimRoom
from daemon.igrtctl.qa_report_tool import report, report_from_file
from daemon.igrtctl.qa_sag import couch_sag

TOOLS = ("daily", "couch-sag", "calibrate", "report")
PROFILES = ("conventional", "srs")
DEFAULT_SOCKET = Path("/var/lib/igrt/igrtd.sock")
HOLD_RATE_HZ = 20.0
# igrtctl's options that come before the subcommand and take a value.
_GLOBAL_VALUE_OPTIONS = ("--socket", "--user", "--key")


# ------------------------------------------------------------------ dispatch
def _qa_word(argv: Sequence[str]) -> int | None:
    """Where the word `qa` is, after igrtctl's global options; None if it is not there."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg == "--json" or arg.split("=", 1)[0] in _GLOBAL_VALUE_OPTIONS:
            i += 1
        else:
            break
    return i if argv[i:i + 1] == ["qa"] else None


def is_qa_tool(argv: Sequence[str]) -> bool:
    """`argv` (after `igrtctl`) asks for one of this module's tools, or for `qa --help`.

    Global options (--socket, --user, --key, --json) may come first, as for any
    room command; `qa start`, `qa results`, ... stay the registry's."""
    i = _qa_word(argv)
    if i is None:
        return False
    rest = argv[i + 1:i + 2]
    return not rest or rest[0] in TOOLS or rest[0] in ("-h", "--help")


def qa_parser() -> ArgParser:
    ap = ArgParser(prog="igrtctl qa",
                   description="daily QA and commissioning through igrtd (docs/qa.md); igrtd's "
                               "single QA commands: igrtctl qa start|image|move|finish|results|"
                               "override ... (igrtctl qa results --help)",
                   epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(ap, argparse.SUPPRESS)
    common = ArgParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="tool", required=True, parser_class=ArgParser)

    daily = sub.add_parser("daily", parents=[common], help="image the phantom, find the BB, "
                           "move through the daily pattern verifying each pose by imaging; "
                           "PASS/FAIL per axis")
    _imaging_options(daily)
    daily.add_argument("--profile", choices=PROFILES,
                       help="tolerance profile (default: the room's qa.profile)")
    daily.add_argument("--step-mm", type=float, default=10.0,
                       help="pattern step of each translation (mm, default 10)")
    daily.add_argument("--step-deg", type=float, default=1.0,
                       help="pattern step of each rotation (deg, default 1)")
    daily.add_argument("--travel-mm", type=float, default=50.0,
                       help="travel of each translation alone, for its scale and the couch's "
                            "yaw offset (mm, default 50; 0: none; igrtd allows qa.travel_mm)")
    daily.add_argument("--rate", type=float, default=HOLD_RATE_HZ,
                       help="hold-to-run heartbeats per second (10..100)")

    sag = sub.add_parser("couch-sag", parents=[common], help="vertical sag and pitch at "
                         "several extensions and loads, and the fitted model")
    _imaging_options(sag)
    sag.add_argument("--extensions", default="0,200,400,600",
                     help="couch long extensions from the QA home, mm (default 0,200,400,600)")
    sag.add_argument("--loads", default="0,80,150",
                     help="loads on the table top, kg (default 0,80,150)")
    sag.add_argument("--rate", type=float, default=HOLD_RATE_HZ,
                     help="hold-to-run heartbeats per second (10..100)")

    cal = sub.add_parser("calibrate", parents=[common], help="propose calibration corrections "
                         "from the QA results; --approve by a second physicist applies them")
    act = cal.add_mutually_exclusive_group()
    act.add_argument("--approve", type=int, metavar="VERSION",
                     help="approve (and so apply) a proposed calibration; not by its proposer")
    act.add_argument("--revert", type=int, metavar="VERSION",
                     help="make an earlier approved calibration VERSION active again (0: none, "
                          "planning exactly as without calibration); needs --reason")
    cal.add_argument("--reason", help="said in the audit record (8..256 characters)")
    _room_dir_option(cal)

    rep = sub.add_parser("report", parents=[common], help="HTML report with per-axis trend "
                         "PNGs, tolerance bands and the last failures")
    rep.add_argument("--out", type=Path, required=True, help="directory for index.html and PNGs")
    rep.add_argument("--limit", type=int, default=200, help="newest results to include")
    rep.add_argument("--results", type=Path, metavar="FILE",
                     help="read results from this JSON file (igrtctl --json qa results > FILE) "
                          "instead of igrtd")
    _room_dir_option(rep)
    return ap


def _room_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, help="a simulated room's run directory: its igrtd "
                   "socket and the demo key of --user (as for daily)")


def _connection_options(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--socket", type=Path, default=default,
                   help="igrtd's control socket (default: the simulated room's igrtd with "
                        "--imaging sim, else $IGRT_SOCKET, else /var/lib/igrt/igrtd.sock)")
    p.add_argument("--user", default=default, help="default $IGRT_USER, else this account")
    p.add_argument("--key", type=Path, default=default,
                   help="sign as --user with this Ed25519 key (default $IGRT_KEY, "
                        "$IGRT_KEY_DIR/USER.key, or the simulated room's RUN_DIR/keys/USER.key)")
    p.add_argument("--json", action="store_true", default=default)


def _imaging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imaging", choices=["sim"], required=True,
                   help="image source: sim, the simulated room's CBCT of the QA phantom (the "
                        "only source in this release)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--run-dir", type=Path, help="the simulated room's run directory")
    where.add_argument("--control-socket", type=Path,
                       help=f"the simulated room's control socket (default ${SIM_SOCKET_ENV})")


def run_qa(argv: list[str]) -> int:
    """igrtctl [--socket S --user U --key K] qa TOOL ...: its exit code. UsageError and
    Unreachable are raised for main to map (one line each)."""
    i = _qa_word(argv)
    if i is None:
        raise UsageError("usage: igrtctl qa daily|couch-sag|calibrate|report ...")
    a = qa_parser().parse_args([*argv[:i], *argv[i + 1:]])
    a.json = bool(getattr(a, "json", False))
    check_args(a)
    if a.tool == "report" and a.results is not None:
        return report_from_file(a)
    return asyncio.run(_run_linked(a))


def _rate(rate: float) -> None:
    if not 10.0 <= rate <= 100.0:  # NaN too
        raise UsageError(f"--rate {rate:g} Hz outside 10..100 Hz (hold-to-run needs >= 10 Hz)")


def check_args(a: argparse.Namespace) -> None:
    """Everything about the options that can be refused before igrtd is reached (USAGE)."""
    if a.tool == "daily":
        _rate(a.rate)
        for name, value, most in (("--step-mm", a.step_mm, 25.0),
                                  ("--step-deg", a.step_deg, 2.5)):
            if not (math.isfinite(value) and 0 < value <= most):
                raise UsageError(f"{name} {value:g} outside (0, {most:g}] (the QA envelope)")
        t = a.travel_mm
        if not (t == 0.0 or (math.isfinite(t) and 25.0 < t <= 100.0)):
            raise UsageError(f"--travel-mm {t:g} mm: give 0 (no travel) or more than 25 mm (the "
                             "QA envelope) and at most 100 mm")
    elif a.tool == "couch-sag":
        _rate(a.rate)
        a.extension_list = sorted(_numbers(a.extensions, "--extensions", 0.0, 700.0))
        a.load_list = _numbers(a.loads, "--loads", 0.0, 300.0)
        if len([e for e in a.extension_list if e > 0]) < 2:
            raise UsageError("--extensions: give at least two besides 0 (a fit needs them)")
    elif a.tool == "calibrate":
        for name, version in (("--approve", a.approve), ("--revert", a.revert)):
            if version is not None and version < (1 if name == "--approve" else 0):
                raise UsageError(f"{name} {version}: not a calibration version")
        if a.revert is not None and (a.reason is None or not 8 <= len(a.reason) <= 256):
            raise UsageError("--revert needs --reason of 8..256 characters (said in the audit "
                             "record)")
        if a.reason is not None and not 8 <= len(a.reason) <= 256:
            raise UsageError("--reason: 8..256 characters")
    elif a.tool == "report" and not 1 <= a.limit <= 500:
        raise UsageError(f"--limit {a.limit}: give 1..500")


def _numbers(text: str, what: str, lo: float, hi: float) -> list[float]:
    """--extensions or --loads: comma-separated numbers, each within lo..hi, none twice."""
    try:
        vals = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and lo <= v <= hi for v in vals):
        raise UsageError(f"{what} must be numbers within {lo:g}..{hi:g}, got {text!r}")
    if len(set(vals)) != len(vals):
        raise UsageError(f"{what}: a value is given twice in {text!r}")
    return vals


async def _run_linked(a: argparse.Namespace) -> int:
    from daemon.igrtctl.links import LocalLink

    sim = SimRoom.from_args(a) if (getattr(a, "imaging", None) == "sim"
                                   or getattr(a, "run_dir", None) is not None) else None
    user = getattr(a, "user", None) or os.environ.get("IGRT_USER") or getpass.getuser()
    link = LocalLink(_igrtd_socket(a, sim), user, _key(a, user, sim))
    try:
        if a.tool == "daily":
            assert sim is not None  # --imaging is required
            return await daily(a, link, sim)
        if a.tool == "couch-sag":
            assert sim is not None
            return await couch_sag(a, link, sim)
        if a.tool == "calibrate":
            return await calibrate(a, link)
        return await report(a, link)
    finally:
        link.close()


def _igrtd_socket(a: argparse.Namespace, sim: SimRoom | None) -> Path:
    given = getattr(a, "socket", None)
    if given is not None:
        return Path(given)
    if sim is not None and sim.igrtd_socket is not None:
        return sim.igrtd_socket  # the simulated room's own igrtd (RUN_DIR/info.json)
    if os.environ.get("IGRT_SOCKET"):
        return Path(os.environ["IGRT_SOCKET"])
    return DEFAULT_SOCKET


def _key(a: argparse.Namespace, user: str, sim: SimRoom | None) -> Path | None:
    given = getattr(a, "key", None) or os.environ.get("IGRT_KEY")
    if given:
        return Path(given)
    if sim is not None:
        demo = sim.run_dir / "keys" / f"{user}.key"
        if demo.is_file():  # the simulated room's demo key of this user
            return demo
    return None  # $IGRT_KEY_DIR/USER.key, else this OS account (local_uid)
