"""Replay a session recording against a fresh igrtd and say whether it reproduces.

    report = asyncio.run(replay(load_recording(path), work_dir))
    print(report.table()); exit(report.exit_status)

igrtd (the production daemon, as its own process: sim.room.DaemonProcess)
runs with the recorded configuration (room, couch link, couch model, policy,
PLC timing, motion, binding; users with their recorded roles, each given a
demo key: the original signatures cannot be reused) against replay devices
(sim/replay_devices.py), and the recorded commands are sent again at their
recorded times, signed by those demo users. igrtd records the replay too
(its own `record` section), and the two recordings are compared: igrtd's
decisive couch frames (TARGET, GO, STOP, RESET, JOG: type and payload, not
SEQ) and its workflow state sequence, each also in time (TIME_TOLERANCE_S).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from daemon.jsontypes import JsonObject, JsonValue
from sim.replay_devices import ReplayClock, ReplayCouch, ReplayPlc
from sim.replay_load import Command, Recording, RecordingError, load_recording

# Recorded and replayed times of the same frame or state change may differ by
# this much: OS scheduling, igrtd's start-up and the 2-3 ms PLC poll move them.
TIME_TOLERANCE_S = 0.5
# After the last recorded command, let the room settle before igrtd is stopped.
SETTLE_S = 1.5


@dataclass(frozen=True, slots=True)
class Row:
    what: str  # "couch" | "state" | "command"
    index: int
    recorded: str
    replayed: str
    dt: float | None
    ok: bool


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reproduces(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def exit_status(self) -> int:
        return 0 if self.reproduces else 1

    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if not r.ok), None)

    def table(self) -> str:
        first = self.first_divergence()
        lines = [f"{'':2} {'stream':8} {'#':>3}  {'recorded':34} {'replayed':34} {'dt s':>6}  verdict"]
        for r in self.rows:
            mark = ">>" if r is first else "  "
            dt = "" if r.dt is None else f"{r.dt:+.3f}"
            verdict = "ok" if r.ok else "DIVERGES"
            lines.append(f"{mark} {r.what:8} {r.index:>3}  {r.recorded[:34]:34} "
                         f"{r.replayed[:34]:34} {dt:>6}  {verdict}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("reproduces" if first is None else
                     f"DIVERGES first at {first.what} #{first.index}: recorded {first.recorded}, "
                     f"replayed {first.replayed}")
        return "\n".join(lines)

    def junit(self) -> str:
        cases = []
        for what in ("couch", "state", "command"):
            rows = [r for r in self.rows if r.what == what]
            bad = next((r for r in rows if not r.ok), None)
            body = "" if bad is None else (
                f"<failure message={quoteattr(f'#{bad.index}: recorded {bad.recorded}, replayed {bad.replayed}')}>"
                f"{escape(self.table())}</failure>")
            cases.append(f'<testcase classname="igrt.replay" name="{what}">{body}</testcase>')
        failures = sum("<failure" in c for c in cases)
        return ('<?xml version="1.0" encoding="utf-8"?>\n'
                f'<testsuite name="igrt-replay" tests="{len(cases)}" failures="{failures}">'
                + "".join(cases) + "</testsuite>\n")


def _compare(what: str, rec: list[tuple[float, str]], rep: list[tuple[float, str]],
             tolerance: float) -> list[Row]:
    rows = []
    for i in range(max(len(rec), len(rep))):
        a = rec[i] if i < len(rec) else None
        b = rep[i] if i < len(rep) else None
        dt = None if a is None or b is None else b[0] - a[0]
        ok = a is not None and b is not None and a[1] == b[1] and abs(dt or 0.0) <= tolerance
        rows.append(Row(what, i + 1, a[1] if a else "(none)", b[1] if b else "(none)", dt, ok))
    return rows


def compare(original: Recording, replayed: Recording,
            tolerance: float = TIME_TOLERANCE_S) -> Report:
    report = Report()

    def frames(r: Recording) -> list[tuple[float, str]]:
        return [(f.t, f"{f.kind} {f.payload.hex()}".strip()) for f in r.decisive_tx()]

    report.rows += _compare("couch", frames(original), frames(replayed), tolerance)
    report.rows += _compare("state", original.state_sequence(), replayed.state_sequence(),
                            tolerance)
    # Command outcomes: the same command refused (or not) for the same reason.
    def outcomes(r: Recording) -> list[tuple[float, str]]:
        return [(c.t, f"{c.cmd} {'ok' if c.ok else c.code}") for c in r.commands
                if c.t < r.window_end and c.cmd != "hold"]

    report.rows += _compare("command", outcomes(original), outcomes(replayed), 10 * tolerance)
    if original.dropped:
        report.notes.append(f"the recording dropped {original.dropped} record(s): replay may "
                            "diverge where they were")
    if original.stopped:
        report.notes.append(f"the recording stopped early: {original.stopped}")
    return report


def igrtd_config(original: Recording, work_dir: Path, couch_path: str,
                 plc_port: int | None) -> JsonObject:
    """The recorded configuration, pointed at the replay devices, users given demo keys."""
    from sim.identities import demo_public_jwk

    recorded = original.header.get("config")
    assert isinstance(recorded, dict)
    cfg: JsonObject = {k: v for k, v in recorded.items() if v is not None}
    rc = recorded.get("couch")
    couch: JsonObject = dict(rc) if isinstance(rc, dict) else {}
    couch["port"] = couch_path
    cfg["couch"] = couch
    plc = recorded.get("plc")
    if isinstance(plc, dict) and plc_port is not None:
        cfg["plc"] = {**plc, "host": "127.0.0.1", "port": plc_port}
    else:
        cfg.pop("plc", None)
    users: list[JsonValue] = [{"name": n, "role": role, "public_key": dict(demo_public_jwk(n))}
                              for n, role in original.users().items()]
    cfg["users"] = users
    cfg["state_dir"] = str(work_dir / "state")
    cfg["record"] = {"path": str(work_dir / "replayed.jsonl")}
    # The replay's state directory holds none of the room's daily QA results: with the
    # gate on, every recorded correction would be refused. The gate is off in a replay
    # (`replay` says so when the recorded room had it on); a recording made before igrtd
    # had a qa section has none either.
    qa = recorded.get("qa")
    cfg["qa"] = {**(qa if isinstance(qa, dict) else {}), "gate": False}
    return cfg


def _rewrite(value: JsonValue, ids: dict[str, str]) -> JsonValue:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, ids) for k, v in value.items()}
    return value


def _send_commands(commands: list[Command], socket_path: Path, room: str, clock: ReplayClock,
                   window_end: float, stop: threading.Event, log: list[str]) -> None:
    """Re-issue the commands at their recorded times (own thread: the client blocks)."""
    from joserfc.jwk import OKPKey

    from daemon.control import ControlClient
    from sim.identities import demo_private_jwk

    clients: dict[str, ControlClient] = {}
    ids: dict[str, str] = {}  # recorded proposal/confirmation ids -> replayed ones
    try:
        for c in commands:
            if c.t >= window_end:
                break
            while not stop.is_set() and (not clock.started or clock.now() < c.t):
                time.sleep(0.001)
            if stop.is_set():
                return
            client = clients.get(c.user)
            if client is None:
                jwk: dict[str, str | list[str]] = dict(demo_private_jwk(c.user))
                key = OKPKey.import_key(jwk)
                client = clients[c.user] = ControlClient(socket_path, c.user, key=key, room=room)
            args = _rewrite(c.args, ids)
            assert isinstance(args, dict)
            reply = client.call(c.cmd, **args)
            result = reply.get("result")
            if isinstance(result, dict):
                for key_name, recorded_id in c.ids.items():
                    new = result.get(key_name)
                    if isinstance(recorded_id, str) and isinstance(new, str):
                        ids[recorded_id] = new
    except (OSError, ConnectionError, ValueError) as exc:
        log.append(f"sending commands stopped: {exc}")
    finally:
        for client in clients.values():
            client.close()


async def replay(original: Recording, work_dir: Path) -> Report:
    """Run the replay in `work_dir` (a new directory) and compare."""
    from sim.room import DaemonProcess

    work_dir.mkdir(parents=True, exist_ok=True)
    first_tx = next(f.t for f in original.couch if f.dir == "tx")
    clock = ReplayClock(first_tx)
    couch = ReplayCouch(original, clock)
    recorded_cfg = original.header.get("config")
    has_plc = isinstance(recorded_cfg, dict) and recorded_cfg.get("plc") is not None
    plc = ReplayPlc(original, clock) if has_plc else None
    await couch.start()
    notes: list[str] = []
    recorded_qa = recorded_cfg.get("qa") if isinstance(recorded_cfg, dict) else None
    if isinstance(recorded_qa, dict) and recorded_qa.get("gate") is True:
        notes.append("the recorded room had the daily-QA gate on; the replay runs with it off "
                     "(it has none of the room's QA results)")
    try:
        if plc is not None:
            await plc.start()
        cfg = igrtd_config(original, work_dir, couch.device_path,
                           plc.port if plc is not None else None)
        daemon = DaemonProcess(dict(cfg), work_dir / "state", work_dir / "igrtd.log")
        await asyncio.to_thread(daemon.start)
        stop = threading.Event()
        sender = asyncio.create_task(asyncio.to_thread(
            _send_commands, original.commands, daemon.socket_path, str(original.header["room"]),
            clock, original.window_end, stop, notes))
        end = min(original.end_t, original.window_end)
        last_cmd = max((c.t for c in original.commands if c.t < original.window_end), default=0.0)
        try:
            while clock.now() < max(end, last_cmd + SETTLE_S):
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await sender
            await asyncio.to_thread(daemon.stop)
    finally:
        if plc is not None:
            await plc.stop()
        await couch.stop()
    try:
        replayed = load_recording(work_dir / "replayed.jsonl")
    except RecordingError as exc:
        raise RuntimeError(f"igrtd's own recording of the replay is unreadable: {exc}") from None
    # The replay ran past the original's end: what igrtd did after is not compared.
    limit = (original.stopping_t if original.stopping_t is not None else original.end_t)
    if replayed.stopping_t is None or replayed.stopping_t > limit + TIME_TOLERANCE_S:
        replayed.stopping_t = limit + TIME_TOLERANCE_S
    report = compare(original, replayed)
    report.notes += notes + [f"couch request without a recorded reply: {u}"
                             for u in couch.unanswered]
    return report


def write_json(report: Report) -> str:
    return json.dumps({"reproduces": report.reproduces, "rows": [
        {"stream": r.what, "index": r.index, "recorded": r.recorded, "replayed": r.replayed,
         "dt": r.dt, "ok": r.ok} for r in report.rows], "notes": report.notes})
