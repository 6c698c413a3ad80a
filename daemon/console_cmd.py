"""igrtctl console commands: the room over MQTT with signed commands, plus
key generation and user registry management.

    igrtctl --broker mqtt://console1:PW@host:1883 --user alice --key alice.key \\
            [--room room1] [--console-id console1] status|interlocks|propose ...|
            confirm ID|approve ID|hold ID|release|stop|reset|session ...|imaging UID
    igrtctl keygen --out PREFIX            -> PREFIX.key (private), PREFIX.pub.jwk
    igrtctl users add --registry FILE --user U --role R --public-key PREFIX.pub.jwk
    igrtctl users list|remove --registry FILE [--user U]

The broker password may also come from --password-file or $IGRT_MQTT_PASSWORD.
Exit status as igrtctl: 0 done, 1 refused, 2 unusable input, 4 broker or
daemon not reachable. Errors are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn

from daemon.cli_workflow import (
    UsageError,
    add_workflow_commands,
    print_result,
    progress_line,
    propose_args,
    triple,
)
from daemon.console.client import (
    BrokerUnavailable,
    CommandRefused,
    ConsoleClient,
    ConsoleError,
    ConsoleTimeout,
)
from daemon.console.keys import KeyFileError, generate_keypair
from daemon.console.schemas import ReplyMessage
from daemon.console.users import RegistryError, add_user, list_users, load_public_jwk, remove_user

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 4


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _err(msg: str) -> None:
    print(f"igrtctl: {msg}", file=sys.stderr)


def _broker_parser() -> _Parser:
    ap = _Parser(prog="igrtctl --broker URL", description="igrt room over MQTT")
    ap.add_argument("--broker", required=True, help="mqtt://[console[:password]@]host[:port] or mqtts://")
    ap.add_argument("--user", default=os.environ.get("IGRT_USER") or getpass.getuser())
    ap.add_argument("--key", type=Path, default=os.environ.get("IGRT_KEY"),
                    help="Ed25519 private JWK (from igrtctl keygen)")
    ap.add_argument("--room", default=os.environ.get("IGRT_ROOM", "room1"))
    ap.add_argument("--console-id", default=os.environ.get("IGRT_CONSOLE_ID"),
                    help="reply topic name; default: the broker user")
    ap.add_argument("--password-file", type=Path, help="broker password (first line)")
    ap.add_argument("--cafile", type=Path, help="CA certificate for mqtts://")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    ap.add_argument("--json", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_workflow_commands(sub, stop_reason="console stop")
    return ap


def _admin_parser() -> _Parser:
    ap = _Parser(prog="igrtctl", description="console keys and users")
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="new Ed25519 key pair")
    k.add_argument("--out", required=True, help="PREFIX: writes PREFIX.key and PREFIX.pub.jwk")
    u = sub.add_parser("users", help="the daemon's console user registry")
    u_sub = u.add_subparsers(dest="action", required=True)
    ua = u_sub.add_parser("add")
    ua.add_argument("--registry", type=Path, required=True)
    ua.add_argument("--user", required=True)
    ua.add_argument("--role", required=True, choices=["therapist", "approver", "service", "viewer"])
    ua.add_argument("--public-key", type=Path, required=True, help="PREFIX.pub.jwk")
    ua.add_argument("--replace", action="store_true")
    ul = u_sub.add_parser("list")
    ul.add_argument("--registry", type=Path, required=True)
    ur = u_sub.add_parser("remove")
    ur.add_argument("--registry", type=Path, required=True)
    ur.add_argument("--user", required=True)
    return ap


def run_console(argv: list[str]) -> int:
    try:
        if argv and argv[0] in ("keygen", "users"):
            return _run_admin(_admin_parser().parse_args(argv))
        a = _broker_parser().parse_args(argv)
        return asyncio.run(_run_broker(a))
    except _Usage as exc:
        _err(str(exc))
        return EXIT_INPUT
    except (KeyFileError, RegistryError) as exc:
        _err(str(exc))
        return EXIT_INPUT
    except CommandRefused as exc:
        _err(str(exc))
        return EXIT_REFUSED
    except (BrokerUnavailable, ConsoleTimeout) as exc:
        _err(str(exc))
        return EXIT_UNREACHABLE
    except ConsoleError as exc:
        _err(str(exc))
        return EXIT_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_REFUSED


def _run_admin(a: argparse.Namespace) -> int:
    if a.cmd == "keygen":
        priv, pub = Path(f"{a.out}.key"), Path(f"{a.out}.pub.jwk")
        generate_keypair(priv, pub)
        print(f"private key: {priv} (keep it secret, mode 0600)")
        print(f"public key:  {pub} (give it to the administrator: igrtctl users add)")
        return EXIT_OK
    if a.action == "add":
        entry = add_user(a.registry, a.user, a.role, load_public_jwk(a.public_key), replace=a.replace)
        print(f"{entry.user}: {entry.role.value}, added to {a.registry}")
        return EXIT_OK
    if a.action == "remove":
        remove_user(a.registry, a.user)
        print(f"{a.user}: removed from {a.registry}")
        return EXIT_OK
    for entry in list_users(a.registry):
        print(f"{entry.user:<24} {entry.role.value:<10} {entry.public_key.x}")
    return EXIT_OK


def _client(a: argparse.Namespace) -> ConsoleClient:
    if a.key is None:
        raise _Usage("--key KEY is required (or $IGRT_KEY); make one with igrtctl keygen")
    password = None
    if a.password_file is not None:
        try:
            password = a.password_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            raise _Usage(f"cannot read a password from {a.password_file}") from None
    tls = None
    if a.cafile is not None:
        try:
            tls = ssl.create_default_context(cafile=str(a.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise _Usage(f"--cafile {a.cafile}: {exc}") from None
    return ConsoleClient(
        a.broker, a.room, a.user, a.key, a.console_id,
        password=password, tls=tls, timeout_s=a.timeout,
    )


def _show(result: dict[str, Any], as_json: bool) -> int:
    print_result(result, as_json)  # same rendering as the local-socket commands
    return EXIT_OK


async def _run_broker(a: argparse.Namespace) -> int:
    client = _client(a)
    async with client as c:
        match a.cmd:
            case "status" | "interlocks" | "release" | "reset":
                return _show(await c.command(a.cmd), a.json)
            case "stop":
                return _show(await c.stop(a.reason), a.json)
            case "session":
                if a.action == "close":
                    return _show(await c.command("close_session"), a.json)
                return _show(await c.command("open_session", {
                    "patient_id": a.patient, "plan_uid": a.plan,
                    "frame_of_reference_uid": a.frame_of_reference,
                    "iso": list(_triple(a.iso)), "patient_position": a.patient_position,
                }), a.json)
            case "imaging":
                return _show(await c.command("record_imaging", {
                    "imaging_session_uid": a.imaging_session, "modality": a.modality,
                }), a.json)
            case "propose":
                try:
                    args = propose_args(a)
                except UsageError as exc:
                    raise _Usage(str(exc)) from None
                args["iso"] = list(args["iso"])
                result = await c.propose(args)
                _show(result, a.json)
                return 3 if result.get("verdict") == "refused" else EXIT_OK
            case "approve":
                return _show(await c.approve(a.proposal_id), a.json)
            case "confirm":
                result = await c.confirm(a.proposal_id)
                if result.get("status") == "awaiting_approval":
                    print(f"{a.proposal_id}: confirmed by {a.user}; needs a second approval "
                          f"by an approver, then igrtctl hold {a.proposal_id}")
                    return EXIT_OK
                if a.no_hold:
                    print(f"{a.proposal_id}: confirmed; hold to run with igrtctl hold {a.proposal_id}")
                    return EXIT_OK
                return await _hold(c, a.proposal_id, 20.0)
            case "hold":
                return await _hold(c, a.proposal_id, a.rate)
    raise _Usage(f"unknown command {a.cmd}")


def _triple(text: str) -> tuple[float, float, float]:
    try:
        return triple(text, "--iso")
    except UsageError as exc:
        raise _Usage(str(exc)) from None


async def _hold(c: ConsoleClient, proposal_id: str, rate_hz: float) -> int:
    """Interactive hold-to-run: progress on one line; Ctrl-C lets go (release)."""
    if rate_hz < 10.0:
        raise _Usage(f"--rate {rate_hz:g} Hz is below the 10 Hz hold-to-run minimum")
    loop = asyncio.get_running_loop()
    last_print = 0.0

    def progress(reply: ReplyMessage) -> None:
        nonlocal last_print
        now = loop.time()
        if reply.ok and reply.result and now - last_print > 0.2:
            sys.stdout.write("\r" + progress_line(reply.result))
            sys.stdout.flush()
            last_print = now

    task = asyncio.ensure_future(c.hold(proposal_id, rate_hz=rate_hz, on_reply=progress))
    interrupted = False

    def let_go() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, let_go)
    try:
        result = await task
    except asyncio.CancelledError:
        if not interrupted:
            raise
        print("\nreleased: motion stopped")
        return EXIT_REFUSED
    except CommandRefused as exc:
        print()
        _err(str(exc))
        return EXIT_REFUSED
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    state = result.get("state")
    if state == "DONE" or result.get("done"):
        outcome = (result.get("result") or {}).get("outcome", "no move needed")
        print("\r" + progress_line(result) + f"\ndone: {outcome}")
        return EXIT_OK
    print(f"\nmove ended in {state}: {result.get('reason')}")
    return EXIT_REFUSED

