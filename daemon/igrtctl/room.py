"""Running a room command from igrtctl, the same way over either transport.

Most commands are one request and the result printed. A few are
interactive: confirm then hold, hold (hold-to-run until the move is over),
jog (repeated steps while held), and diag --bundle (the bundle is saved
here). Ctrl-C during a hold or a jog lets go: release or stop is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from collections.abc import Awaitable
from typing import TypeVar

from daemon.igrtctl.exits import ExitCode, UsageError, err
from daemon.igrtctl.links import Refused, Reply, RoomLink, reading
from daemon.igrtctl.render import print_result, progress_line
from daemon.igrtctl.room_cli import HOLD_RATE_HZ, JOG_STEP_MS
from daemon.jsontypes import JsonMapping, JsonObject, as_float, as_object, as_str

T = TypeVar("T")


async def run_command(a: argparse.Namespace, args: JsonObject, link: RoomLink) -> ExitCode:
    """Send the registered command `a.command` with `args`; the exit code of how it ended."""
    name: str = a.command
    if name == "confirm":
        return await _confirm(a, link, await link.call(name, **args))
    if name == "hold":
        return await hold_until_done(link, a.proposal_id, a.rate)
    if name == "jog":
        return await _jog(link, args, a.seconds)
    reply = await link.call(name, **args)
    if not reply.ok:
        return refused(name, reply)
    result = reply.result
    if name == "diag":
        return _diag(a, result)
    print_result(result, a.json)
    if name == "propose" and result.get("verdict") == "refused":
        return ExitCode.VERDICT_REFUSED
    return ExitCode.OK


async def run_whoami(a: argparse.Namespace, link: RoomLink) -> ExitCode:
    reply = await link.whoami()
    if not reply.ok:
        return refused("whoami", reply)
    print_result(reply.result, a.json)
    return ExitCode.OK


def refused(cmd: str, reply: Reply) -> ExitCode:
    err(str(Refused.of(cmd, reply)))
    return ExitCode.REFUSED


async def _confirm(a: argparse.Namespace, link: RoomLink, reply: Reply) -> ExitCode:
    if not reply.ok:
        return refused("confirm", reply)
    if reply.result.get("status") == "awaiting_approval":
        print(f"{a.proposal_id}: confirmed by {link.user}; needs a second approval "
              f"(igrtctl approve {a.proposal_id} by an approver), then igrtctl hold")
        return ExitCode.OK
    if a.no_hold:
        print(f"{a.proposal_id}: confirmed; hold to run with igrtctl hold {a.proposal_id}")
        return ExitCode.OK
    return await hold_until_done(link, a.proposal_id, HOLD_RATE_HZ)


async def until_interrupted(work: Awaitable[T]) -> tuple[T | None, bool]:
    """(result, False), or (None, True) when Ctrl-C cancelled `work`."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = False

    def let_go() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, let_go)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: no Ctrl-C
        installed = False
    try:
        return await task, False
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return None, True
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


async def hold_until_done(link: RoomLink, proposal_id: str, rate_hz: float) -> ExitCode:
    """Hold-to-run from this terminal: heartbeats (20 Hz by default) until the move ends.

    Ctrl-C releases the hold, which stops the couch.
    """
    if not 10.0 <= rate_hz <= 100.0:
        raise UsageError(f"--rate {rate_hz:g} Hz outside 10..100 Hz (hold-to-run needs >= 10 Hz)")
    tty = sys.stdout.isatty()
    last_print = 0.0

    def progress(p: JsonMapping) -> None:
        nonlocal last_print
        now = time.monotonic()
        if now - last_print > (0.2 if tty else 0.5):
            with reading("hold"):
                line = progress_line(p)
            _write(("\r" if tty else "   ") + line + ("" if tty else "\n"))
            last_print = now

    try:
        result, interrupted = await until_interrupted(link.hold(proposal_id, rate_hz, progress))
    except Refused as exc:
        _write("\n")
        err(str(exc))
        return ExitCode.REFUSED
    if interrupted or result is None:
        _write("\nreleased: motion stopped\n")
        return ExitCode.REFUSED
    state = result.get("state")
    if state == "DONE" or result.get("done"):
        with reading("hold"):
            outcome = as_object(result.get("result") or {}, "result").get("outcome",
                                                                          "no move needed")
            line = progress_line(result)
        _write(("\r" if tty else "   ") + line + f"\ndone: {outcome}\n")
        return ExitCode.OK
    _write(f"\nmove ended in {state}: {result.get('reason')}\n")
    return ExitCode.REFUSED


async def _jog(link: RoomLink, args: JsonObject, seconds: float) -> ExitCode:
    """Repeat short jog steps while held; Ctrl-C or the end of `seconds` lets go."""
    if not 0 < seconds <= 30:
        raise UsageError(f"--seconds {seconds:g} outside 0..30 s")
    axis = as_str(args["axis"], "axis")  # built by room_cli from a choice of AXES
    deadline = time.monotonic() + seconds

    async def steps() -> ExitCode:
        while time.monotonic() < deadline:
            reply = await link.call("jog", **args)
            if not reply.ok:
                return refused("jog", reply)
            with reading("jog"):
                pose = as_object(reply.result.get("pose", {}), "pose")
                value = as_float(pose.get(axis, math.nan), f"pose.{axis}")
            _write(f"\r{axis} {value:9.3f}")
            await asyncio.sleep(JOG_STEP_MS / 2000.0)
        return ExitCode.OK

    try:
        code, _interrupted = await until_interrupted(steps())
    finally:
        await link.call("stop", reason="jog released")
    if code is ExitCode.REFUSED:
        return code
    _write("\n")
    return ExitCode.OK


def _diag(a: argparse.Namespace, result: JsonObject) -> ExitCode:
    from daemon import diagnostics

    if a.bundle is not None:
        try:
            saved = diagnostics.save_bundle_reply(result, a.bundle)
        except (ValueError, OSError) as exc:
            err(f"bundle not saved: {exc}")
            return ExitCode.USAGE
        sys.stderr.write(f"bundle {saved['path']}: {saved['bytes']} bytes, "
                         f"sha256 {saved['sha256']}\n")
    with reading("diag"):
        report = as_object(result.get("report"), "report")
    if a.json:
        print_result(report, True)
    else:
        print("\n".join(diagnostics.summary_lines(report)))
    return ExitCode.OK


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
