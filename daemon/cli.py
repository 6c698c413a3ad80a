"""igrtctl: the command-line client of igrtd.

Offline tools (no daemon needed): plan, register, register2d, reg show, audit.
Room commands over the local control socket: status, session, imaging,
propose, confirm, approve, hold, stop, reset, interlocks, monitor, whoami.
On the local socket a user name counts only with a proof: `--key FILE` (or
$IGRT_KEY, or $IGRT_KEY_DIR/<user>.key) signs each command with the user's
Ed25519 key; without a key igrtd takes the identity from this process's OS
account (`local_uid` in the room config). See docs/operations.md.
Console commands over MQTT with signed requests: `igrtctl --broker URL ...`
(see docs/console-api.md), keygen, users.

Exit status: 0 done, 1 refused by the daemon, 2 unusable input, 3 plan
refused, 4 daemon not reachable.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from daemon.cli_args import join_negative_values
from daemon.cli_workflow import (
    HOLD_RATE_HZ,
    UsageError,
    add_workflow_commands,
    print_result,
    progress_line,
    propose_args,
    triple,
)

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_PLAN_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
DEFAULT_SOCKET = Path("/var/lib/igrt/igrtd.sock")


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _err(msg: str) -> None:
    print(f"igrtctl: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- offline tools
def _offline(cmd: str) -> Callable[[list[str]], int] | None:
    if cmd == "plan":
        from daemon.plan_cmd import run_plan

        return run_plan
    if cmd == "register":
        from daemon.register_cmd import run_register

        return run_register
    if cmd == "register2d":
        from daemon.register2d_cmd import run_register2d

        return run_register2d
    if cmd == "register4d":
        from daemon.register2d_cmd import run_register4d

        return run_register4d
    if cmd == "audit":
        from daemon.audit_cmd import run_audit

        return run_audit
    return None


# ------------------------------------------------------------- room commands
class Room:
    """The local control socket, with one-line errors for the CLI."""

    def __init__(self, socket_path: Path, user: str, key: Path | None = None) -> None:
        from daemon.console.keys import KeyFileError
        from daemon.control import FROM_ENVIRONMENT, ControlClient

        try:
            self.client = ControlClient(socket_path, user,
                                        key=FROM_ENVIRONMENT if key is None else key)
        except KeyFileError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise ConnectionError(f"cannot reach igrtd at {socket_path}: {exc.strerror or exc}")

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return self.client.call(cmd, **args)
        except ValueError as exc:  # e.g. a NaN option: JSON for igrtd holds finite numbers only
            raise UsageError(f"{cmd}: cannot send these arguments: {exc}") from None


def hold_until_done(room: Room, proposal_id: str, *, out: Callable[[str], None],
                    rate_hz: float = HOLD_RATE_HZ) -> int:
    """Hold-to-run from this terminal: heartbeats (20 Hz by default) until the move ends.

    Ctrl-C releases the hold, which stops the couch.
    """
    if not 10.0 <= rate_hz <= 100.0:
        raise UsageError(f"--rate {rate_hz:g} Hz outside 10..100 Hz (hold-to-run needs >= 10 Hz)")
    period = 1.0 / rate_hz
    interrupted = False

    def _sigint(*_: Any) -> None:
        nonlocal interrupted
        interrupted = True

    old = signal.signal(signal.SIGINT, _sigint)
    tty = sys.stdout.isatty()
    last_print = 0.0
    try:
        while True:
            if interrupted:
                room.call("release")
                out("\nreleased: motion stopped")
                return EXIT_REFUSED
            reply = room.call("hold", proposal_id=proposal_id)
            if not reply["ok"]:
                out(f"\nrefused: {reply['error']}")
                return EXIT_REFUSED
            p = reply["result"]
            state = p.get("state")
            now = time.monotonic()
            if now - last_print > (0.2 if tty else 0.5):
                out(("\r" if tty else "   ") + progress_line(p) + ("" if tty else "\n"))
                last_print = now
            if state == "DONE":
                res = p.get("result") or {}
                out(("\r" if tty else "   ") + progress_line(p)
                    + f"\ndone: {res.get('outcome', 'no move needed')}\n")
                return EXIT_OK
            if state not in ("MOVING", "VERIFYING", "CONFIRMED"):
                out(f"\nmove ended in {state}: {p.get('reason')}\n")
                return EXIT_REFUSED
            time.sleep(period)
    finally:
        signal.signal(signal.SIGINT, old)


def _room_parser() -> _Args:
    ap = _Args(prog="igrtctl", description="igrt client")
    ap.add_argument("--socket", type=Path,
                    default=Path(os.environ.get("IGRT_SOCKET", str(DEFAULT_SOCKET))))
    ap.add_argument("--user", default=os.environ.get("IGRT_USER") or getpass.getuser())
    ap.add_argument("--key", type=Path, default=os.environ.get("IGRT_KEY"),
                    help="sign as --user with this Ed25519 private JWK (igrtctl keygen); "
                         "default $IGRT_KEY, else $IGRT_KEY_DIR/USER.key, else this OS account")
    ap.add_argument("--json", action="store_true")
    # --json may also follow the subcommand; SUPPRESS keeps the top-level value otherwise.
    common = _Args(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Args)
    _add = sub.add_parser
    sub.add_parser = lambda name, **kw: _add(name, parents=[common], **kw)  # type: ignore[method-assign]
    add_workflow_commands(sub, stop_reason="")
    sub.add_parser("reset")
    sub.add_parser("whoami", help="how igrtd sees this connection (room, uid, user)")
    sv = sub.add_parser("service", help="service mode (service role)")
    sv.add_argument("action", choices=["enter", "exit"])
    jg = sub.add_parser("jog", help="jog one axis at reduced speed while this runs (hold-to-run)")
    jg.add_argument("axis", choices=["lat", "long", "vert", "yaw", "pitch", "roll"])
    jg.add_argument("velocity", type=float, help="mm/s or deg/s, signed")
    jg.add_argument("--seconds", type=float, default=1.0, help="how long to hold (max 30)")
    mo = sub.add_parser("monitor", help="intrafraction monitoring with beam hold (beam on/off)")
    mo_sub = mo.add_subparsers(dest="action", required=True, parser_class=_Args)
    ms = mo_sub.add_parser("start", parents=[common],
                           help="beam on: monitor the target, hold the beam on drift")
    ms.add_argument("--marker", action="append", required=True, metavar="X,Y,Z",
                    help="planned marker position, room mm (repeat for each marker)")
    ms.add_argument("--target", default="0,0,0", metavar="X,Y,Z",
                    help="planned target position, room mm (default the isocentre)")
    ms.add_argument("--tolerance", type=float, help="mm; may only tighten the site's")
    ms.add_argument("--debounce", type=float, help="s; may only be shorter than the site's")
    ms.add_argument("--release-after", type=float, help="s; may only be longer than the site's")
    mp = mo_sub.add_parser("stop", parents=[common],
                           help="beam off: end monitoring (a hold stays asserted)")
    mp.add_argument("--release-hold", action="store_true",
                    help="also release the beam hold (audited as your decision)")
    mp.add_argument("--records", action="store_true", help="include every frame's record")
    mo_sub.add_parser("status", parents=[common])
    ar = sub.add_parser("arms", help="kV imager arms: extend for imaging, retract to park")
    ar.add_argument("action", choices=["extend", "retract"])
    dg = sub.add_parser("diag", help="device self-test (service role)")
    dg.add_argument("--bundle", type=Path, metavar="FILE",
                    help="also save a diagnostics bundle (.tar.gz)")
    return ap


_VECTOR_OPTIONS = frozenset({"--iso", "--couch-at-imaging", "--marker", "--target"})


def _join_negative_vectors(argv: list[str]) -> list[str]:
    return join_negative_values(argv, _VECTOR_OPTIONS)


def run_room(argv: list[str]) -> int:
    a = _room_parser().parse_args(_join_negative_vectors(argv))
    # The registration file is read before igrtd is reached, so a bad file is the
    # same one-line error with or without a running daemon.
    proposal = propose_args(a) if a.cmd == "propose" else {}
    room = Room(a.socket, a.user, a.key)

    def show(reply: dict[str, Any]) -> int:
        if not reply["ok"]:
            _err(reply["error"])
            return EXIT_REFUSED
        print_result(reply["result"], a.json)
        return EXIT_OK

    match a.cmd:
        case "status" | "interlocks" | "reset" | "release":
            return show(room.call(a.cmd))
        case "whoami":
            who = room.client.whoami()
            if who.get("ok"):
                who["result"]["signing_as"] = a.user if room.client.signs else None
            return show(who)
        case "stop":
            return show(room.call("stop", reason=a.reason))
        case "session":
            if a.action == "close":
                return show(room.call("close_session"))
            return show(room.call("open_session", patient_id=a.patient, plan_uid=a.plan,
                                  frame_of_reference_uid=a.frame_of_reference,
                                  iso=triple(a.iso, "--iso"),
                                  patient_position=a.patient_position))
        case "imaging":
            return show(room.call("record_imaging", imaging_session_uid=a.imaging_session,
                                  modality=a.modality))
        case "propose":
            reply = room.call("propose", **proposal)
            if not reply["ok"]:
                _err(reply["error"])
                return EXIT_REFUSED
            print_result(reply["result"], a.json)
            return EXIT_PLAN_REFUSED if reply["result"]["verdict"] == "refused" else EXIT_OK
        case "confirm":
            reply = room.call("confirm", proposal_id=a.proposal_id)
            if not reply["ok"]:
                _err(reply["error"])
                return EXIT_REFUSED
            state = reply["result"]["status"]
            if state == "awaiting_approval":
                print(f"{a.proposal_id}: confirmed by {a.user}; needs a second approval "
                      f"(igrtctl approve {a.proposal_id} by an approver), then igrtctl hold")
                return EXIT_OK
            if a.no_hold:
                print(f"{a.proposal_id}: confirmed; hold to run with igrtctl hold {a.proposal_id}")
                return EXIT_OK
            return hold_until_done(room, a.proposal_id, out=_write)
        case "approve":
            return show(room.call("approve", proposal_id=a.proposal_id))
        case "hold":
            return hold_until_done(room, a.proposal_id, out=_write, rate_hz=a.rate)
        case "service":
            return show(room.call("enter_service" if a.action == "enter" else "exit_service"))
        case "jog":
            return _jog(room, a.axis, a.velocity, a.seconds)
        case "arms":
            return show(room.call("arms", extend=a.action == "extend"))
        case "monitor":
            if a.action == "status":
                return show(room.call("monitor_status"))
            if a.action == "stop":
                return show(room.call("monitor_stop", release_hold=a.release_hold,
                                      include_records=a.records))
            args: dict[str, Any] = {
                "markers_mm": [triple(m, "--marker") for m in a.marker],
                "target_mm": triple(a.target, "--target"),
            }
            for key, value in (("tolerance_mm", a.tolerance), ("debounce_s", a.debounce),
                               ("release_after_s", a.release_after)):
                if value is not None:
                    args[key] = value
            return show(room.call("monitor_start", **args))
        case "diag":
            reply = room.call("diag", bundle=a.bundle is not None)
            if not reply["ok"]:
                _err(reply["error"])
                return EXIT_REFUSED
            from daemon import diagnostics

            result = reply["result"]
            if a.bundle is not None:
                try:
                    saved = diagnostics.save_bundle_reply(result, a.bundle)
                except (ValueError, OSError) as exc:
                    _err(f"bundle not saved: {exc}")
                    return EXIT_INPUT
                print(f"bundle {saved['path']}: {saved['bytes']} bytes, sha256 {saved['sha256']}",
                      file=sys.stderr)
            if a.json:
                print_result(result["report"], True)
            else:
                print("\n".join(diagnostics.summary_lines(result["report"])))
            return EXIT_OK
    raise UsageError(f"unknown command {a.cmd}")


def _jog(room: Room, axis: str, velocity: float, seconds: float) -> int:
    """Repeat short jog steps while held; Ctrl-C or the end of `seconds` lets go."""
    if not 0 < seconds <= 30:
        raise UsageError(f"--seconds {seconds:g} outside 0..30 s")
    step_ms = 200
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            reply = room.call("jog", axis=axis, velocity=velocity, duration_ms=step_ms)
            if not reply["ok"]:
                _err(reply["error"])
                return EXIT_REFUSED
            pose = reply["result"].get("pose", {})
            _write(f"\r{axis} {pose.get(axis, float('nan')):9.3f}")
            time.sleep(step_ms / 2000.0)
    except KeyboardInterrupt:
        pass
    finally:
        room.call("stop", reason="jog released")
    _write("\n")
    return EXIT_OK


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            _room_parser().print_help()
            print("\noffline: plan, register, register2d, register4d, reg show, audit; "
                  "console: --broker URL ..., keygen, users")
            return EXIT_OK
        if argv[0] == "reg":
            from daemon.register_cmd import run_reg_show

            if len(argv) < 2 or argv[1] != "show":
                raise UsageError("usage: igrtctl reg show FILE [--json]")
            return run_reg_show(argv[2:])
        tool = _offline(argv[0])
        if tool is not None:
            return tool(argv[1:])
        if "--broker" in argv or argv[0] in ("keygen", "users"):
            from daemon.console_cmd import run_console

            return run_console(argv)
        return run_room(argv)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_INPUT
    except ConnectionError as exc:
        _err(str(exc))
        return EXIT_UNREACHABLE
    except BrokenPipeError:
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    raise SystemExit(main())
