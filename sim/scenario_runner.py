"""Run scenario files (sim/scenario.py), each in a fresh simulated room.

    results = asyncio.run(run_files([Path("sim/scenarios/door-opens-during-a-move.json")]))

Actions run one after the other at their time (`at`, seconds from the start,
once igrtd is connected to the couch and the PLC); a step whose time has
passed (after a `wait`) runs at once. Each expectation runs as its own task from
the moment its step is reached, so a later step never waits for an earlier
expectation's window. Steps with the same `at` share one reference time, taken
as the first of them starts: `{"at": 1.2, "sim": ...}` then `{"at": 1.2,
"expect": ...}` measures from the injection. What is measured comes from the
device side (the couch's record of commands it executed, its true motion), from
igrtd's state as its local socket reports it, and from igrtd's audit files.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.control_ops import OpError, run_op
from sim.scenario import Expect, Scenario, Step, Wait, load_scenario
from sim.scenario_checks import Checks, Row, ScenarioResult, reply_code
from sim.scenario_flow import Flow
from sim.stack import SimulatedRoom

READY_TIMEOUT_S = 20.0


class ScenarioRun:
    """One scenario in one running room."""

    def __init__(self, room: SimulatedRoom, scenario: Scenario, label: str) -> None:
        self.room = room
        self.scenario = scenario
        self.label = label
        self.flow = Flow(room)
        self.checks = Checks(room, self.flow)
        self.rows: list[Row] = []
        self._tasks: list[asyncio.Task[Row]] = []

    async def run(self) -> list[Row]:
        try:
            await self.checks.start()
            await self._ready()
            t0 = time.monotonic()
            group_at, group_ref = -1.0, t0
            for step in self.scenario.steps:
                delay = t0 + step.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if step.at != group_at:
                    group_at, group_ref = step.at, time.monotonic()
                await self._step(step, group_ref)
            for task in self._tasks:
                self.rows.append(await task)
        finally:
            for task in self._tasks:
                task.cancel()
            await self.flow.close()
            await self.checks.stop()
        return sorted(self.rows, key=lambda r: r.at)

    async def _ready(self) -> None:
        """igrtd up with both links before t = 0: a scenario starts in a working room."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            st = await self.flow.status()
            couch_ok = bool((st.get("couch") or {}).get("link_ok"))
            plc_ok = self.room.plc is None or not any(
                "link" in str(x).lower() or "heartbeat" in str(x).lower()
                for x in (st.get("interlocks") or {}).get("open", []))
            if st.get("state") not in (None, "OFFLINE") and couch_ok and plc_ok:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"igrtd not ready within {READY_TIMEOUT_S:g} s: "
                                   f"state {st.get('state')}, interlocks {st.get('interlocks')}")
            await asyncio.sleep(0.05)

    def _row(self, step: Step, what: str, measured: str, passed: bool, message: str = "") -> Row:
        return Row(self.label, step.at, what, measured, passed, message)

    async def _step(self, step: Step, ref: float) -> None:
        if step.expect is not None:
            self._tasks.append(asyncio.create_task(self._expect(step, step.expect, ref)))
            return
        if step.wait is not None:
            self.rows.append(await self._wait(step, step.wait))
            return
        try:
            await self._act(step)
        except (OpError, OSError, ValueError, RuntimeError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            self.rows.append(self._row(step, f"{step.kind} (step)", "failed", False,
                                       f"the {step.kind} step could not run: {text}"))

    async def _act(self, step: Step) -> None:
        f = self.flow
        if step.igrtd is not None:
            await f.call(step.igrtd.as_, step.igrtd.cmd, dict(step.igrtd.args))
        elif step.open_session is not None:
            await f.open_session(step.open_session.as_)
        elif step.propose is not None:
            await f.propose(step.propose)
        elif step.confirm is not None:
            await f.call(step.confirm.as_, "confirm",
                         {"proposal_id": f.proposal(step.confirm.proposal)})
        elif step.approve is not None:
            await f.call(step.approve.as_, "approve",
                         {"proposal_id": f.proposal(step.approve.proposal)})
        elif step.hold is not None:
            await f.hold(step.hold.as_, f.proposal(step.hold.proposal), step.hold.pendant)
        elif step.hold_stop is not None:
            await f.hold_stop(step.hold_stop.pendant)
        elif step.sim is not None:
            await run_op(self.room, step.sim.op, dict(step.sim.args))

    async def _wait(self, step: Step, w: Wait) -> Row:
        what = (f"wait state {w.state}" if w.state is not None
                else f"wait couch_moving {str(w.couch_moving).lower()}")
        what += f" within {w.within_s:g} s"
        t0 = time.monotonic()
        while True:
            if w.state is not None:
                seen = self.checks.state_now()
                ok = seen == w.state
            else:
                seen = "moving" if self.room.couch is not None and self.room.couch.is_moving \
                    else "not moving"
                ok = (seen == "moving") == bool(w.couch_moving)
            waited = time.monotonic() - t0
            if ok:
                return self._row(step, what, f"{seen} after {waited:.2f} s", True)
            if waited > w.within_s:
                return self._row(step, what, f"{seen} after {waited:.2f} s", False,
                                 f"expected {what.removeprefix('wait ')}; still {seen}")
            await asyncio.sleep(0.01)

    async def _expect(self, step: Step, e: Expect, ref: float) -> Row:
        if e.kind == "reply":
            code = reply_code(self.flow.last_reply)
            ok = code == e.reply
            return self._row(step, e.text(), code, ok,
                             "" if ok else f"expected reply {e.reply}, got {code}"
                             + self.flow.last_reply_text())
        measured, ok, message = await self.checks.check(e, ref)
        return self._row(step, e.text(), measured, ok, message)


async def run_scenario(path: Path, scenario: Scenario, run_dir: Path) -> ScenarioResult:
    """One scenario in a fresh room under `run_dir` (created; must not exist or be empty)."""
    t0 = time.monotonic()
    result = ScenarioResult(str(path), scenario.name, scenario.hazard)
    try:
        async with SimulatedRoom(scenario.room_description(), run_dir) as room:
            result.rows = await ScenarioRun(room, scenario, path.name).run()
    except (OSError, RuntimeError, ValueError, TimeoutError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        result.rows.append(Row(path.name, 0.0, "room", "failed", False,
                               f"the simulated room failed: {text}"))
    result.seconds = time.monotonic() - t0
    return result


async def run_files(paths: Sequence[Path], run_dir: Path | None = None) -> list[ScenarioResult]:
    """Every file is read first (ValueError: a bad one, nothing runs), then each runs in
    its own room: `run_dir/NN-STEM`, or a temporary directory removed afterwards."""
    scenarios = [(p, load_scenario(p)) for p in paths]
    with contextlib.ExitStack() as stack:
        root = run_dir if run_dir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="igrt-scenarios-")))
        results = []
        for i, (path, scenario) in enumerate(scenarios, 1):
            results.append(await run_scenario(path, scenario, root / f"{i:02d}-{path.stem}"))
        return results


def summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    rows = [r for res in results for r in res.rows]
    return {"scenarios": len(results), "expectations": len(rows),
            "failed": sum(not r.passed for r in rows),
            "seconds": round(sum(res.seconds for res in results), 2)}
