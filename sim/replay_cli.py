"""`igrt-sim replay RECORDING [--junit FILE] [--json] [--work-dir DIR]`.

Replays a session recording (docs/record-replay.md) against a fresh igrtd and
prints the divergence table. Exit status: 0 reproduces, 1 diverges (or the
replay itself failed), 2 bad input (not a readable recording).

sim/cli.py adds it as the `replay` subcommand; `python -m sim.replay_cli` runs
it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("replay", help="replay a session recording against a fresh igrtd")
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", type=Path, help="a recording written by igrtd (record section)")
    p.add_argument("--junit", type=Path, help="also write the verdict as JUnit XML")
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON line")
    p.add_argument("--work-dir", type=Path,
                   help="where igrtd of the replay runs (default: a new temporary directory)")


def run(args: argparse.Namespace) -> int:
    from sim.replay import replay, write_json
    from sim.replay_load import RecordingError, load_recording

    try:
        recording = load_recording(args.recording)
    except RecordingError as exc:
        print(f"igrt-sim: {exc}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="igrt-replay-"))
    try:
        report = asyncio.run(replay(recording, work))
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"igrt-sim: replay failed: {' '.join(str(exc).split())} (see {work})",
              file=sys.stderr)
        return 1
    print(write_json(report) if args.json else report.table())
    if args.junit is not None:
        args.junit.write_text(report.junit())
    return report.exit_status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="igrt-sim replay", description=__doc__.splitlines()[0])
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
