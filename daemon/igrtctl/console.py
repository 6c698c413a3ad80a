"""igrtctl over MQTT with signed commands, and console key and user administration.

    igrtctl --broker mqtt://console1:PW@host:1883 --user alice --key alice.key \\
            [--room room1] [--console-id console1] <room command> ...
    igrtctl keygen --out PREFIX            -> PREFIX.key (private), PREFIX.pub.jwk
    igrtctl users add --registry FILE --user U --role R --public-key PREFIX.pub.jwk
    igrtctl users list|remove --registry FILE [--user U]

The room commands are the same as on the local socket (room_cli.py). The
broker password may also come from --password-file or $IGRT_MQTT_PASSWORD.
"""

from __future__ import annotations

import argparse
import getpass
import os
import ssl
from pathlib import Path

from daemon.api import Role
from daemon.console.client import BrokerUnavailable, ConsoleClient, ConsoleError
from daemon.console.keys import KeyFileError, generate_keypair
from daemon.console.users import (
    RegistryError,
    add_user,
    list_users,
    load_public_jwk,
    remove_user,
)
from daemon.igrtctl.exits import EXIT_CODES_HELP, ArgParser, ExitCode, Unreachable, UsageError
from daemon.igrtctl.links import MqttLink
from daemon.igrtctl.room import run_command
from daemon.igrtctl.room_cli import add_room_commands, command_args


def broker_parser() -> ArgParser:
    ap = ArgParser(prog="igrtctl --broker URL", description="igrt room over MQTT",
                   epilog=EXIT_CODES_HELP,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True,
                    help="mqtt://[console[:password]@]host[:port] or mqtts://")
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
    common = ArgParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    add_room_commands(sub, common)
    return ap


async def run_broker(a: argparse.Namespace) -> ExitCode:
    # Arguments (a registration file, vectors) are read before the broker is
    # reached, so bad input is the same one-line error with or without a broker.
    args = command_args(a)
    client = _client(a)
    try:
        async with client:
            return await run_command(a, args, MqttLink(client))
    except BrokerUnavailable as exc:
        raise Unreachable(str(exc)) from None


def _client(a: argparse.Namespace) -> ConsoleClient:
    if a.key is None:
        raise UsageError("--key KEY is required (or $IGRT_KEY); make one with igrtctl keygen")
    password = None
    if a.password_file is not None:
        try:
            password = a.password_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            raise UsageError(f"cannot read a password from {a.password_file}") from None
    tls = None
    if a.cafile is not None:
        try:
            tls = ssl.create_default_context(cafile=str(a.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--cafile {a.cafile}: {exc}") from None
    try:
        return ConsoleClient(a.broker, a.room, a.user, a.key, a.console_id,
                             password=password, tls=tls, timeout_s=a.timeout)
    except (ConsoleError, KeyFileError) as exc:  # broker URL, console id, key file
        raise UsageError(str(exc)) from None


def admin_parser() -> ArgParser:
    ap = ArgParser(prog="igrtctl", description="console keys and users",
                   epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    k = sub.add_parser("keygen", help="new Ed25519 key pair")
    k.add_argument("--out", required=True, help="PREFIX: writes PREFIX.key and PREFIX.pub.jwk")
    u = sub.add_parser("users", help="the daemon's console user registry")
    u_sub = u.add_subparsers(dest="action", required=True, parser_class=ArgParser)
    ua = u_sub.add_parser("add")
    ua.add_argument("--registry", type=Path, required=True)
    ua.add_argument("--user", required=True)
    ua.add_argument("--role", required=True, choices=[r.value for r in Role])
    ua.add_argument("--public-key", type=Path, required=True, help="PREFIX.pub.jwk")
    ua.add_argument("--replace", action="store_true")
    ul = u_sub.add_parser("list")
    ul.add_argument("--registry", type=Path, required=True)
    ur = u_sub.add_parser("remove")
    ur.add_argument("--registry", type=Path, required=True)
    ur.add_argument("--user", required=True)
    return ap


def run_admin(a: argparse.Namespace) -> ExitCode:
    try:
        return _admin(a)
    except (KeyFileError, RegistryError) as exc:
        raise UsageError(str(exc)) from None


def _admin(a: argparse.Namespace) -> ExitCode:
    if a.cmd == "keygen":
        priv, pub = Path(f"{a.out}.key"), Path(f"{a.out}.pub.jwk")
        generate_keypair(priv, pub)
        print(f"private key: {priv} (keep it secret, mode 0600)")
        print(f"public key:  {pub} (give it to the administrator: igrtctl users add)")
        return ExitCode.OK
    if a.action == "add":
        entry = add_user(a.registry, a.user, a.role, load_public_jwk(a.public_key),
                         replace=a.replace)
        print(f"{entry.user}: {entry.role.value}, added to {a.registry}")
        return ExitCode.OK
    if a.action == "remove":
        remove_user(a.registry, a.user)
        print(f"{a.user}: removed from {a.registry}")
        return ExitCode.OK
    for entry in list_users(a.registry):
        print(f"{entry.user:<24} {entry.role.value:<10} {entry.public_key.x}")
    return ExitCode.OK
