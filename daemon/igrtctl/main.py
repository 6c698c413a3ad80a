"""igrtctl: the command-line client of igrtd.

Offline tools (no daemon needed): plan, register, register2d, register4d,
reg show, audit, dicom status|find|retrieve. The room commands of the command registry (daemon/commands.py)
over the local control socket, or with `--broker URL` over MQTT, with the same
subcommands on both. On the local socket a user name counts only with a
proof: `--key FILE` (or $IGRT_KEY, or $IGRT_KEY_DIR/<user>.key) signs each
command with the user's Ed25519 key; without a key igrtd takes the identity
from this process's OS account (`local_uid` in the room config). See
docs/operations.md. Console keys and users: keygen, users. A simulated
room's control API (igrt-sim up): sim.

Every path ends in one `ExitCode` (exits.py, listed by `igrtctl --help`);
errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path

from daemon.igrtctl.args import join_negative_values
from daemon.igrtctl.exits import EXIT_CODES_HELP, ArgParser, ExitCode, Unreachable, UsageError, err
from daemon.igrtctl.room_cli import VECTOR_OPTIONS, add_room_commands, command_args

DEFAULT_SOCKET = Path("/var/lib/igrt/igrtd.sock")
OFFLINE_HELP = """\
offline tools:  plan, register, register2d, register4d, reg show, audit,
                dicom status|find|retrieve (igrt's DICOM node and the clinic's PACS)
over MQTT:      igrtctl --broker URL [--key FILE ...] <room command>  (same commands)
console admin:  keygen, users
simulated room: igrtctl sim OP [--arg KEY=VALUE ...] [--run-dir DIR | --sim-socket PATH]
QA (docs/qa.md): igrtctl qa daily|couch-sag|calibrate|report ... (igrtctl qa --help)"""


def local_parser() -> ArgParser:
    ap = ArgParser(prog="igrtctl", description="igrt client: room commands on the local socket",
                   epilog=f"{OFFLINE_HELP}\n\n{EXIT_CODES_HELP}",
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", type=Path,
                    default=Path(os.environ.get("IGRT_SOCKET", str(DEFAULT_SOCKET))))
    ap.add_argument("--user", default=os.environ.get("IGRT_USER") or getpass.getuser())
    ap.add_argument("--key", type=Path, default=os.environ.get("IGRT_KEY"),
                    help="sign as --user with this Ed25519 private JWK (igrtctl keygen); "
                         "default $IGRT_KEY, else $IGRT_KEY_DIR/USER.key, else this OS account")
    ap.add_argument("--json", action="store_true")
    # --json may also follow the subcommand; SUPPRESS keeps the top-level value otherwise.
    common = ArgParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    add_room_commands(sub, common)
    who = sub.add_parser("whoami", parents=[common],
                         help="how igrtd sees this connection (room, uid, user)")
    who.set_defaults(command="whoami")
    return ap


async def _run_local(a: argparse.Namespace) -> ExitCode:
    from daemon.igrtctl.links import LocalLink
    from daemon.igrtctl.room import run_command, run_whoami

    # The registration file is read before igrtd is reached, so a bad file is the
    # same one-line error with or without a running daemon.
    args = {} if a.command == "whoami" else command_args(a)
    link = LocalLink(a.socket, a.user, a.key)
    try:
        if a.command == "whoami":
            return await run_whoami(a, link)
        return await run_command(a, args, link)
    finally:
        link.close()


def _offline(cmd: str) -> Callable[[list[str]], int] | None:
    if cmd == "plan":
        from daemon.igrtctl.plan import run_plan

        return run_plan
    if cmd == "register":
        from daemon.igrtctl.register import run_register

        return run_register
    if cmd == "register2d":
        from daemon.igrtctl.register2d import run_register2d

        return run_register2d
    if cmd == "register4d":
        from daemon.igrtctl.register2d import run_register4d

        return run_register4d
    if cmd == "audit":
        from daemon.igrtctl.audit import run_audit

        return run_audit
    if cmd == "dicom":
        from daemon.igrtctl.dicom import run_dicom

        return run_dicom
    return None


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        local_parser().print_help()
        return ExitCode.OK
    if argv[:2] == ["reg", "show"]:
        from daemon.igrtctl.register import run_reg_show

        return run_reg_show(argv[2:])
    if argv[0] == "reg" and argv[1:2] != ["run"]:
        raise UsageError("usage: igrtctl reg show FILE [--json] | igrtctl reg run --fixed F "
                         "--moving M")
    tool = _offline(argv[0])
    if tool is not None:
        return tool(argv[1:])
    from daemon.igrtctl.qa import is_qa_tool

    if is_qa_tool(argv):  # QA runs: many igrtd commands each (qa.py); `qa start` etc. below
        from daemon.igrtctl.qa import run_qa

        return run_qa(argv)
    if argv[0] == "sim":  # the simulated room's control API, not an igrtd command
        from daemon.igrtctl.sim_control import run_sim

        return run_sim(argv[1:])
    if "--broker" in argv:
        from daemon.igrtctl.console import broker_parser, run_broker

        return asyncio.run(run_broker(broker_parser().parse_args(
            join_negative_values(argv, VECTOR_OPTIONS))))
    if argv[0] in ("keygen", "users"):
        from daemon.igrtctl.console import admin_parser, run_admin

        return run_admin(admin_parser().parse_args(argv))
    return asyncio.run(_run_local(local_parser().parse_args(
        join_negative_values(argv, VECTOR_OPTIONS))))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(_dispatch(argv))
    except UsageError as exc:
        err(str(exc))
        return ExitCode.USAGE
    except Unreachable as exc:
        err(str(exc))
        return ExitCode.UNREACHABLE
    except BrokenPipeError:  # `igrtctl ... | head`: nobody reads the rest
        return ExitCode.UNREACHABLE
    except KeyboardInterrupt:  # Ctrl-C outside a hold or jog: nothing was left running
        err("interrupted")
        return ExitCode.REFUSED


if __name__ == "__main__":
    raise SystemExit(main())
