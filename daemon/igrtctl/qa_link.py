"""What every `igrtctl qa` tool shares: igrtd's commands, the hold-to-run move, the
simulated room's control socket, and how a stopped run is abandoned (docs/qa.md).

The tools (qa_daily, qa_sag, qa_calibrate, qa_report_tool) only orchestrate;
this module is their one way to igrtd and to the simulated room, so a refusal
from either is one QaStopped line and a stopped run always lets go of the
pendant and closes igrtd's QA session (`abandon`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.igrtctl.exits import ExitCode, Unreachable, UsageError
from daemon.jsontypes import JsonObject, JsonValue, as_float, as_object, as_str

if TYPE_CHECKING:  # imported when used: `igrtctl sim ...` need not load the console client
    from daemon.igrtctl.links import Reply, RoomLink

AXES = ("lat", "long", "vert", "yaw", "pitch", "roll")
ROTATIONS = ("yaw", "pitch", "roll")
SIM_SOCKET_ENV = "IGRT_SIM_CONTROL"
PENDANT_WAIT_S = 5.0
ACQUIRE_TIMEOUT_S = 120.0


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


def read_pose(value: object, what: str) -> dict[str, float]:
    obj = as_object(value, what)
    return {ax: as_float(obj.get(ax, 0.0), f"{what}.{ax}") for ax in AXES}


async def current_pose(link: RoomLink) -> dict[str, float]:
    status = await call(link, "status")
    with reading("status"):
        couch = as_object(status.get("couch"), "couch")
        return read_pose(couch.get("pose"), "couch.pose")


async def press_pendant(link: RoomLink, sim: SimRoom,
                        say: Callable[[str], None] | None = None) -> None:
    """Press the simulated pendant and wait until igrtd reads it (it polls the PLC)."""
    (say or say_line)("hold-to-run: pressing the simulated room's motion-enable pendant "
                      "(sim op pendant); igrtctl sends the hold heartbeats")
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


async def abandon(link: RoomLink, sim: SimRoom | None, why: str, unload: bool = False) -> None:
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


def say_line(line: str) -> None:
    """A progress line, flushed: each step shows as it happens, piped or not."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def quiet(_line: str) -> None:
    """No progress lines: with --json stdout is the result's JSON only."""


def label_of(text: str) -> str:
    """An igrtd image label (letters, digits and _ . : + - only) for `text`."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_.:+-") else "_" for c in text)
    return out.strip("_")[:64] or "image"
