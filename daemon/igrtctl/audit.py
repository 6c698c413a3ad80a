"""`igrtctl audit verify|show`: inspect the audit log without the daemon.

Reads the segment files directly and never writes, so it is safe while igrtd
runs (a torn final line is reported, not repaired: igrtd repairs on start).
Exit codes (daemon/igrtctl/exits.py): 0 OK, 5 AUDIT_DAMAGED (tampered or
damaged log), 2 USAGE (usage or I/O error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from daemon.audit import (
    AuditCorruptError,
    AuditError,
    AuditRecord,
    read_records,
    tail_records,
    verify,
)
from daemon.igrtctl.exits import ArgParser, ExitCode, UsageError

DEFAULT_AUDIT_DIR = Path("/var/lib/igrt/audit")


def default_audit_dir() -> Path:
    env = os.environ.get("IGRT_AUDIT_DIR")
    return Path(env) if env else DEFAULT_AUDIT_DIR


def parse_when(text: str) -> float:
    """ISO 8601 date or date-time to UNIX time; no offset means UTC (as shown)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-05-09T14:30:00Z or 2026-05-09)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _parser() -> ArgParser:
    p = ArgParser(prog="igrtctl audit", description="Inspect the tamper-evident audit log.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    v = sub.add_parser(
        "verify", help="check the whole hash chain; exit 1 naming the first bad record"
    )
    v.add_argument("--dir", type=Path, default=None, help="audit directory")
    s = sub.add_parser("show", help="print records, filtered")
    s.add_argument("--dir", type=Path, default=None, help="audit directory")
    s.add_argument("--since", help="ISO time, inclusive (no offset: UTC)")
    s.add_argument("--until", help="ISO time, inclusive (no offset: UTC)")
    s.add_argument("--user", help="only records by this actor")
    s.add_argument("--event", help="only this event type (proposal, confirmation, command, ...)")
    s.add_argument("--last", type=int, default=None, metavar="N", help="only the last N matches")
    s.add_argument("--json", action="store_true", help="one JSON object per line, as stored")
    return p


def _format(rec: AuditRecord) -> str:
    details = json.dumps(rec.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{rec.seq:>8}  {rec.time_iso}  {rec.event:<14} {rec.actor:<12} {details}"


def _verify(directory: Path, out: TextIO) -> int:
    result = verify(directory)
    for warning in result.warnings:
        print(f"warning: {warning}", file=out)
    if result.ok:
        print(
            f"audit OK: {result.records} records in {result.segments} segment(s); "
            f"head seq {result.head_seq} hash {result.head_hash[:16]}",
            file=out,
        )
        return ExitCode.OK
    if result.first_bad is None:  # not a chain problem (e.g. missing directory)
        raise AuditError(result.problem)
    print(
        f"audit TAMPERED: first bad record seq {result.first_bad}: {result.problem} "
        f"({result.records} records before it verified)",
        file=out,
    )
    return ExitCode.AUDIT_DAMAGED


def _show(args: argparse.Namespace, directory: Path, out: TextIO) -> int:
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    if since is not None and until is not None and since > until:
        raise UsageError(f"--since {args.since} is after --until {args.until}")
    if args.last is not None and args.last < 0:
        raise UsageError(f"--last {args.last} must be >= 0")
    filtered = any(x is not None for x in (since, until, args.user, args.event))
    if args.last is not None and not filtered:
        records = iter(tail_records(directory, args.last))  # reads only the end
    else:
        records = read_records(
            directory, since=since, until=until, actor=args.user, event=args.event
        )
        if args.last is not None:
            records = iter(deque(records, maxlen=args.last))
    for rec in records:
        if args.json:
            print(json.dumps(rec.to_dict(), ensure_ascii=False, separators=(",", ":")), file=out)
        else:
            print(_format(rec), file=out)
    return ExitCode.OK


def run_audit(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point for `igrtctl audit ...`; `argv` may start with "audit"."""
    out = out or sys.stdout
    err = err or sys.stderr
    if argv and argv[0] == "audit":
        argv = argv[1:]
    try:
        args = _parser().parse_args(argv)
        directory = args.dir or default_audit_dir()
        if args.command == "verify":
            return _verify(directory, out)
        return _show(args, directory, out)
    except UsageError as exc:
        print(f"igrtctl audit: {exc}", file=err)
        return ExitCode.USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except AuditCorruptError as exc:
        # A record that cannot be read during `show` is damage, like verify's.
        print(f"igrtctl audit: {exc}", file=err)
        return ExitCode.AUDIT_DAMAGED
    except AuditError as exc:
        print(f"igrtctl audit: {exc}", file=err)
        return ExitCode.USAGE
    except BrokenPipeError:  # `igrtctl audit show | head`
        return ExitCode.OK
    except OSError as exc:
        print(f"igrtctl audit: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=err)
        return ExitCode.USAGE


def main() -> None:
    sys.exit(run_audit(sys.argv[1:]))


if __name__ == "__main__":
    main()
