"""How a scenario's expectations are measured, and what a result is.

Couch commands come from the couch simulator's own record (`executed_commands`,
stamped on its loop with `time.monotonic()`, the clock the runner measures
from); whether the couch moves is its ground truth; igrtd's state is polled on
its local socket every POLL_S into a timeline; audit records are read from
igrtd's audit files (`ts`, wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.control import ControlClient
from sim.scenario import Expect
from sim.scenario_flow import Flow
from sim.stack import SimulatedRoom

POLL_S = 0.01  # igrtd status; a state lasting less than this may go unseen
DEVICE_POLL_S = 0.002  # device records are in this process: cheap to look at


@dataclass(frozen=True)
class Row:
    """One expectation (or a step that could not run) and its verdict."""

    scenario: str
    at: float
    what: str
    measured: str
    passed: bool
    message: str = ""


@dataclass
class ScenarioResult:
    path: str
    name: str
    hazard: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)


def reply_code(reply: dict[str, Any] | None) -> str:
    if reply is None:
        return "none"
    if reply.get("ok"):
        return "ok"
    return str(reply.get("code") or "refused")


class Checks:
    def __init__(self, room: SimulatedRoom, flow: Flow) -> None:
        self.room = room
        self.flow = flow
        self.states: list[tuple[float, str]] = []  # (monotonic when answered, state)
        self._task: asyncio.Task[None] | None = None
        self._client: ControlClient | None = None

    async def start(self) -> None:
        assert self.room.daemon is not None
        self._client = await asyncio.to_thread(
            ControlClient, self.room.daemon.socket_path, self.room.description.users[0].name,
            key=None)
        self._task = asyncio.create_task(self._poll(), name="scenario state poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            self._client.close()

    async def _poll(self) -> None:
        assert self._client is not None
        client = self._client
        while True:
            try:
                reply = await asyncio.to_thread(client.call, "status")
            except OSError:  # igrtd gone: its last state stands
                return
            result = reply.get("result")
            state = str(result.get("state", "?")) if isinstance(result, dict) else "?"
            self.states.append((time.monotonic(), state))
            await asyncio.sleep(POLL_S)

    def state_now(self) -> str:
        return self.states[-1][1] if self.states else "unknown"

    # ------------------------------------------------------------ checks
    async def check(self, e: Expect, ref: float) -> tuple[str, bool, str]:
        """(measured, passed, failure message) of one expectation from `ref` (monotonic)."""
        if e.couch_command is not None:
            return await self._couch_command(e.couch_command, ref, e.window_s, e.text())
        if e.no_couch_command is not None:
            return await self._no_couch_command(e.no_couch_command, ref, e.window_s)
        if e.state is not None:
            return await self._state(e.state, ref, e.window_s, e.text())
        if e.audit is not None:
            return await self._audit(e.audit, e.matching, ref, e.window_s, e.text())
        return await self._halted(ref, e.window_s, e.text())

    def _commands(self, kind: str, since: float) -> list[float]:
        couch = self.room.couch
        if couch is None:
            return []
        return [c.t for c in list(couch.executed_commands) if c.kind == kind and c.t >= since]

    async def _couch_command(self, kind: str, ref: float, window: float,
                             what: str) -> tuple[str, bool, str]:
        while True:
            hits = self._commands(kind, ref)
            if hits:
                ms = (hits[0] - ref) * 1000.0
                ok = ms <= window * 1000.0
                return (f"{kind} after {ms:.1f} ms", ok,
                        "" if ok else f"expected {what}; measured {kind} after {ms:.1f} ms")
            if time.monotonic() > ref + window:
                return ("none", False, (f"expected {what}; no {kind} reached the couch "
                        f"within {window * 1000.0:.0f} ms"))
            await asyncio.sleep(DEVICE_POLL_S)

    async def _no_couch_command(self, kind: str, ref: float,
                                window: float) -> tuple[str, bool, str]:
        await asyncio.sleep(max(0.0, ref + window - time.monotonic()))
        hits = [t for t in self._commands(kind, ref) if t <= ref + window]
        if not hits:
            return "none", True, ""
        ms = (hits[0] - ref) * 1000.0
        return (f"{kind} after {ms:.1f} ms", False,
                (f"expected no {kind} for {window:g} s; {len(hits)} reached the couch, the "
                f"first after {ms:.1f} ms"))

    async def _state(self, state: str, ref: float, window: float,
                     what: str) -> tuple[str, bool, str]:
        while True:
            seen = [(t, s) for t, s in self.states if t >= ref]
            hit = next((t for t, s in seen if s == state), None)
            if hit is not None:
                return f"{state} after {hit - ref:.3f} s", True, ""
            if time.monotonic() > ref + window:
                last = seen[-1][1] if seen else self.state_now()
                return (f"{last} (never {state})", False,
                        f"expected {what}; igrtd was still {last} after {window:g} s")
            await asyncio.sleep(POLL_S / 2)

    def _audit_records(self, event: str, matching: str | None, since_wall: float) -> list[float]:
        out: list[float] = []
        for path in sorted((self.room.state_dir / "audit").glob("audit-*.jsonl")):
            try:
                lines = path.read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line igrtd is still writing
                if (isinstance(rec, dict) and rec.get("event") == event
                        and isinstance(rec.get("ts"), (int, float)) and rec["ts"] >= since_wall
                        and (matching is None or matching in json.dumps(rec.get("details")))):
                    out.append(float(rec["ts"]))
        return out

    async def _audit(self, event: str, matching: str | None, ref: float, window: float,
                     what: str) -> tuple[str, bool, str]:
        ref_wall = time.time() - (time.monotonic() - ref)
        while True:
            # The audit clock is igrtd's wall clock: allow it 5 ms ahead of ours.
            hits = await asyncio.to_thread(self._audit_records, event, matching, ref_wall - 0.005)
            if hits:
                return f"{event} after {max(0.0, min(hits) - ref_wall):.3f} s", True, ""
            if time.monotonic() > ref + window:
                return ("none", False, (f"expected {what}; no such audit record in "
                        f"{self.room.state_dir / 'audit'}"))
            await asyncio.sleep(0.05)

    async def _halted(self, ref: float, window: float, what: str) -> tuple[str, bool, str]:
        while True:
            couch = self.room.couch
            if couch is not None and not couch.is_moving:
                return f"halted after {max(0.0, time.monotonic() - ref):.3f} s", True, ""
            if time.monotonic() > ref + window:
                return ("still moving", False, (f"expected {what}; the couch still moved "
                        f"after {window:g} s"))
            await asyncio.sleep(DEVICE_POLL_S)
