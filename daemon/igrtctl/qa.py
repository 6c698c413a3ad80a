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
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.igrtctl.exits import (
    EXIT_CODES_HELP,
    ArgParser,
    ExitCode,
    Unreachable,
    UsageError,
    err,
)
from daemon.jsontypes import (
    JsonMapping,
    JsonObject,
    JsonValue,
    as_bool,
    as_float,
    as_list,
    as_object,
    as_str,
)

if TYPE_CHECKING:  # imported when used: `igrtctl sim ...` need not load the console client
    from daemon.igrtctl.links import Reply, RoomLink

TOOLS = ("daily", "couch-sag", "calibrate", "report")
AXES = ("lat", "long", "vert", "yaw", "pitch", "roll")
ROTATIONS = ("yaw", "pitch", "roll")
PROFILES = ("conventional", "srs")
DEFAULT_SOCKET = Path("/var/lib/igrt/igrtd.sock")
SIM_SOCKET_ENV = "IGRT_SIM_CONTROL"
HOLD_RATE_HZ = 20.0
PENDANT_WAIT_S = 5.0
ACQUIRE_TIMEOUT_S = 120.0
# igrtctl's options that come before the subcommand and take a value.
_GLOBAL_VALUE_OPTIONS = ("--socket", "--user", "--key")


class QaStopped(Exception):
    """The run cannot go on; str() is the one line, `code` the exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.REFUSED) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def reading(cmd: str) -> Iterator[None]:
    """links.reading: a malformed reply to `cmd` is one line (exit UNREACHABLE)."""
    from daemon.igrtctl.links import reading as links_reading

    with links_reading(cmd):
        yield


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
        return _report_from_file(a)
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


# ------------------------------------------------------------------ the simulated room
@dataclass(frozen=True, slots=True)
class SimRoom:
    """The simulated room's control socket: the phantom's CBCT, the pendant, the load."""

    control: Path
    run_dir: Path
    igrtd_socket: Path | None
    prefix: str
    # Each acquire_cbct reply, in order (its `true_pose`: the simulated truth, for a bench).
    acquired: list[JsonObject] = field(default_factory=list)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> SimRoom:
        if getattr(a, "control_socket", None) is not None:
            control = Path(a.control_socket)
        elif a.run_dir is not None:
            control = Path(a.run_dir) / "control.sock"
        elif os.environ.get(SIM_SOCKET_ENV):
            control = Path(os.environ[SIM_SOCKET_ENV])
        else:
            raise UsageError(f"--imaging sim: say where the simulated room is: --run-dir DIR, "
                             f"--control-socket PATH or ${SIM_SOCKET_ENV}")
        run_dir = control.parent
        igrtd = None
        try:
            info = json.loads((run_dir / "info.json").read_text())
            igrtd = Path(info["igrtd"]["socket"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not readable: --socket or $IGRT_SOCKET says where igrtd is
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
        return cls(control, run_dir, igrtd, f"qa-{stamp}")

    def op(self, op: str, args: JsonObject | None = None, timeout_s: float = 30.0) -> JsonObject:
        from daemon.igrtctl.sim_control import request

        reply = request(self.control, op, args or {}, timeout_s)
        if reply.get("ok") is not True:
            raise QaStopped(f"simulated room refused {op}: {reply.get('error', 'refused')}")
        return reply

    def acquire(self, n: int, label: str) -> str:
        slug = label_of(label).replace(":", "_")
        reply = self.op("acquire_cbct", {"path": f"{self.prefix}-{n:02d}-{slug}.mha",
                                         "subject": "qa_phantom"}, ACQUIRE_TIMEOUT_S)
        self.acquired.append(reply)
        with reading("acquire_cbct"):
            return as_str(reply.get("path"), "path")

    def pendant(self, pressed: bool) -> None:
        self.op("pendant", {"pressed": pressed})

    def load(self, kg: float) -> None:
        self.op("couch_load", {"kg": kg})

    def place(self, centre_mm: tuple[float, float, float]) -> None:
        """Lay the phantom with its centre at this room point, the couch as it is now."""
        self.op("qa_phantom_place", {"centre_mm": list(centre_mm)})


# ------------------------------------------------------------------ igrtd
async def call(link: RoomLink, cmd: str, **args: JsonValue) -> JsonObject:
    from daemon.igrtctl.links import Refused

    reply: Reply = await link.call(cmd, **args)
    if not reply.ok:
        raise QaStopped(str(Refused.of(cmd, reply)))
    return reply.result


def _pose(value: object, what: str) -> dict[str, float]:
    obj = as_object(value, what)
    return {ax: as_float(obj.get(ax, 0.0), f"{what}.{ax}") for ax in AXES}


async def _current_pose(link: RoomLink) -> dict[str, float]:
    status = await call(link, "status")
    with reading("status"):
        couch = as_object(status.get("couch"), "couch")
        return _pose(couch.get("pose"), "couch.pose")


async def press_pendant(link: RoomLink, sim: SimRoom,
                        say: Callable[[str], None] | None = None) -> None:
    """Press the simulated pendant and wait until igrtd reads it (it polls the PLC)."""
    (say or _say)("hold-to-run: pressing the simulated room's motion-enable pendant (sim op "
                  "pendant); igrtctl sends the hold heartbeats")
    sim.pendant(True)
    deadline = time.monotonic() + PENDANT_WAIT_S
    while True:
        status = await call(link, "status")
        with reading("status"):
            interlocks = as_object(status.get("interlocks") or {}, "interlocks")
            if interlocks.get("motion_enable_pressed") is True:
                return
        if time.monotonic() > deadline:
            raise QaStopped(f"igrtd did not see the motion-enable pendant pressed within "
                            f"{PENDANT_WAIT_S:g} s")
        await asyncio.sleep(0.1)


async def move(link: RoomLink, target: dict[str, float], rate_hz: float) -> JsonObject:
    """qa_move to `target`, then hold-to-run until the move is over; QaStopped unless DONE."""
    from daemon.igrtctl.links import Refused
    from daemon.igrtctl.room import until_interrupted

    proposal = await call(link, "qa_move", target=dict(target))
    with reading("qa_move"):
        pid = as_str(proposal.get("id") or proposal.get("proposal_id"), "id")
    try:
        result, interrupted = await until_interrupted(link.hold(pid, rate_hz, lambda _p: None))
    except Refused as exc:
        raise QaStopped(str(exc)) from None
    if interrupted or result is None:
        raise QaStopped("released (Ctrl-C): motion stopped")
    if result.get("state") != "DONE" and not result.get("done"):
        raise QaStopped(f"QA move ended in {result.get('state')}: {result.get('reason')}")
    return result


async def _abandon(link: RoomLink, sim: SimRoom | None, why: str, unload: bool = False) -> None:
    """After a stopped run: let go of the pendant (and the simulated load), and close the
    QA session igrtd holds (qa_finish abort: stored as aborted, never counts as a pass)."""
    if sim is not None:
        ops: list[tuple[str, JsonObject]] = [("pendant", {"pressed": False})]
        if unload:
            ops.append(("couch_load", {"kg": 0.0}))
        for op, args in ops:
            try:
                sim.op(op, args)
            except (QaStopped, Unreachable, UsageError):
                pass
    reason = " ".join(f"igrtctl qa stopped: {why}".split())[:256]
    try:
        reply = await link.call("qa_finish", abort=True, reason=reason)
        if not reply.ok:
            await link.call("close_session")
    except (Unreachable, UsageError):
        pass


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _quiet(_line: str) -> None:
    pass


# ------------------------------------------------------------------ daily
def label_of(text: str) -> str:
    """An igrtd image label (letters, digits and _ . : + - only) for `text`."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_.:+-") else "_" for c in text)
    return out.strip("_")[:64] or "image"


def _describe_step(rel: dict[str, float]) -> str:
    moved = [(ax, v) for ax, v in rel.items() if abs(v) > 1e-9]
    if not moved:
        return "home"
    return " ".join(f"{ax} {v:+g} {'deg' if ax in ROTATIONS else 'mm'}" for ax, v in moved)


def daily_pattern(step_mm: float, step_deg: float) -> list[dict[str, float]]:
    """The daily pattern relative to the QA home (safety.qa.qa_pattern)."""
    from safety.qa import qa_pattern

    return [{ax: float(getattr(p, ax)) for ax in AXES} for p in qa_pattern(step_mm, step_deg)]


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
    say = _quiet if a.json else _say  # --json: stdout is the result's JSON only
    pattern = daily_pattern(a.step_mm, a.step_deg)
    start_args: JsonObject = {"kind": "daily"}
    if a.profile is not None:
        start_args["profile"] = a.profile
    start = await call(link, "qa_start", **start_args)
    try:
        with reading("qa_start"):
            home = _pose(start["home"], "home") if "home" in start else await _current_pose(link)
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
        await _abandon(link, sim, str(exc) or type(exc).__name__)
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
        print("\n".join(table(lines)))
        failed = [c for c in lines if not c.passed]
        print(f"QA {'PASSED' if passed else 'FAILED'}"
              + (f": {len(failed)} of {len(lines)} checks beyond tolerance" if failed else "")
              + ("" if passed else "; clinical corrections are refused until a daily QA "
                 "passes (or a physicist overrides for a session)"))
    return ExitCode.OK if passed else ExitCode.REFUSED


# ------------------------------------------------------------------ couch sag
def _numbers(text: str, what: str, lo: float, hi: float) -> list[float]:
    try:
        vals = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and lo <= v <= hi for v in vals):
        raise UsageError(f"{what} must be numbers within {lo:g}..{hi:g}, got {text!r}")
    if len(set(vals)) != len(vals):
        raise UsageError(f"{what}: a value is given twice in {text!r}")
    return vals


async def couch_sag(a: argparse.Namespace, link: RoomLink, sim: SimRoom) -> int:
    """igrtd's sag session: per load a baseline at home, then each extension (long only)
    imaged; igrtd fits safety.qa_sag at qa_finish and stores the model."""
    say = _quiet if a.json else _say
    extensions: list[float] = a.extension_list  # checked by check_args
    loads: list[float] = a.load_list
    try:
        start = await call(link, "qa_start", kind="sag", load_kg=loads[0])
    except QaStopped as exc:
        err(str(exc))
        return exc.code
    try:
        with reading("qa_start"):
            home = _pose(start["home"], "home") if "home" in start else await _current_pose(link)
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
                    measured = _pose(seen.get("measured"), "measured")
                say(f"  extension {ext:5.0f} mm: vertical sag {-measured['vert']:+.2f} mm, "
                    f"pitch {-measured['pitch']:+.3f} deg")
                await move(link, home, a.rate)
        sim.place((0.0, 0.0, 0.0))
        sim.pendant(False)
        sim.load(0.0)
        result = await call(link, "qa_finish")
    except BaseException as exc:
        await _abandon(link, sim, str(exc) or type(exc).__name__, unload=True)
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


# ------------------------------------------------------------------ calibration
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


# ------------------------------------------------------------------ report
async def report(a: argparse.Namespace, link: RoomLink) -> int:
    try:
        reply = await call(link, "qa_results", kind="daily", limit=a.limit)
    except QaStopped as exc:
        err(str(exc))
        return exc.code
    with reading("qa_results"):
        results = [as_object(r, "results[]") for r in as_list(reply.get("results"), "results")]
    return _write(a, results)


def _report_from_file(a: argparse.Namespace) -> int:
    try:
        raw = json.loads(Path(a.results).read_text())
    except OSError as exc:
        raise UsageError(f"--results {a.results}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--results {a.results}: not JSON: {exc}") from None
    listed = raw.get("results") if isinstance(raw, dict) else raw
    if not isinstance(listed, list) or not all(isinstance(r, dict) for r in listed):
        raise UsageError(f"--results {a.results}: expected a list of results or "
                         "{\"results\": [...]}")
    listed = [r for r in listed if r.get("kind", "daily") == "daily"][:a.limit]
    return _write(a, listed)


def _write(a: argparse.Namespace, results: list[JsonObject]) -> int:
    from daemon.qa_report import write_report

    if not any(r.get("aborted") is not True for r in results):
        err(f"no completed daily QA results to report ({len(results)} aborted)")
        return ExitCode.REFUSED
    try:
        files = write_report(results, Path(a.out))
    except ValueError as exc:
        raise UsageError(f"QA results: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--out {a.out}: {exc.strerror or exc}") from None
    if a.json:
        print(json.dumps({"html": str(files.html), "results": files.results,
                          "failures": files.failures,
                          "charts": {k: str(v) for k, v in files.charts.items()}}, indent=2))
    else:
        print(f"{files.html}: {files.results} results, {files.failures} failed checks, "
              f"{len(files.charts)} trend charts")
    return ExitCode.OK
