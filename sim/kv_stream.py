"""The simulated kV imaging system: connects to igrtd's imager socket, waits for
igrtd's `acquire` command and then streams stereo kV frames (drivers/kv_imager.py
wire protocol) at the commanded rate until told to `stop`.

What the frames show comes either from a `MotionScenario` (timed from the
moment acquisition starts, as beam-on) or, without one, from the mutable
`displacement` / `marker_visible` attributes a test sets while it runs.
Every frame sent is recorded as a `FrameTruth` whose `t_available` is the
monotonic time just before its first byte is written: the moment the image
"becomes available" to igrtd, from which hold latency is measured.

Faults for tests: `close()` (link lost), `send_raw()` (bad bytes),
`clock_offset_s` (the imaging system's clock runs ahead or behind),
`stamp_age_s` (frames stamped as acquired that long ago).

`run_through_igrtd()` runs a scenario through igrtd as its own process, and
`monitor_scenario_via_igrtd()` is the `make demo MODE=monitor` entry point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.monitoring import FrameRecord, HoldEvent
from drivers.kv_imager import KvProtocolError, encode_frame, read_command
from imaging.drr import KvGeometry
from safety.beam_hold import BeamHoldPolicy
from sim.intrafraction import (
    COMPACT_PAIR,
    MARKERS_MM,
    MONITOR_PAIR,
    TARGET_MM,
    FrameTruth,
    KvFrameRenderer,
    MotionScenario,
    RunResult,
    analyse,
    demo_scenario,
    deviation_png,
    percentile_ms,
    report,
)

log = logging.getLogger(__name__)

# How long `close` lets the link send what it still holds before dropping it.
CLOSE_FLUSH_S = 2.0


class SimKvImager:
    def __init__(
        self,
        socket_path: Path | str,
        geometries: Sequence[KvGeometry] = COMPACT_PAIR,
        markers_mm: Sequence[Sequence[float]] = MARKERS_MM,
        *,
        seed: int = 0,
        scenario: MotionScenario | None = None,
        renderer: KvFrameRenderer | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.geometries = tuple(geometries)
        self.renderer = renderer or KvFrameRenderer(self.geometries, markers_mm, seed)
        self.scenario = scenario
        self._rng = np.random.default_rng(seed)
        self.displacement: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.marker_visible = True
        # The room-frame map of the markers, asked at every frame (None: identity): a
        # test makes it follow the simulated couch, so a couch correction moves what
        # the frames show (issue 17, correction between beams).
        self.scene: Callable[[], np.ndarray] | None = None
        self.clock_offset_s = 0.0
        self.stamp_age_s = 0.0
        self.sent: list[FrameTruth] = []
        self.commands: list[dict[str, Any]] = []
        self.t0: float | None = None  # monotonic time acquisition (beam-on) started
        self.scenario_done = asyncio.Event()
        self._next_id = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._commands_task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    @property
    def acquiring(self) -> bool:
        return self._stream_task is not None and not self._stream_task.done()

    async def connect(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(self.socket_path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self._commands_task = asyncio.create_task(self._read_commands(), name="sim-kv commands")

    async def close(self) -> None:
        """Drop the link (as a crashed or unplugged imaging system would)."""
        await self._stop_stream()
        if self._commands_task is not None:
            self._commands_task.cancel()
            try:
                await self._commands_task
            except asyncio.CancelledError:
                pass
            self._commands_task = None
        if self._writer is not None:
            self._writer.close()
            try:
                # A close sends what is still buffered first; a peer that has stopped
                # reading (igrtd after a stop ended monitoring) would hold it open for
                # ever, so after a bound the link is dropped unflushed, as unplugged.
                await asyncio.wait_for(self._writer.wait_closed(), CLOSE_FLUSH_S)
            except TimeoutError:
                self._writer.transport.abort()
            except OSError:
                pass
            self._writer = None

    async def send_raw(self, data: bytes) -> None:
        assert self._writer is not None, "not connected"
        async with self._lock:
            self._writer.write(data)
            await self._writer.drain()

    async def send_frame(self, displacement: Sequence[float] | None = None,
                         visible: bool | None = None, t_rel: float = 0.0) -> FrameTruth:
        """Render and send one frame now (outside or during acquisition)."""
        d = np.asarray(self.displacement if displacement is None else displacement, dtype=float)
        vis = self.marker_visible if visible is None else visible
        images = await asyncio.to_thread(self.renderer.render, d, vis, self._scene())
        return await self._send(images, d, vis, t_rel)

    def _scene(self) -> np.ndarray | None:
        return None if self.scene is None else np.asarray(self.scene(), dtype=float)

    # ------------------------------------------------------------ internals
    async def _send(self, images: tuple[np.ndarray, ...], d: np.ndarray, visible: bool,
                    t_rel: float) -> FrameTruth:
        assert self._writer is not None, "not connected"
        fid = self._next_id
        self._next_id += 1
        async with self._lock:
            t_avail = time.monotonic()
            data = encode_frame(fid, time.time() + self.clock_offset_s - self.stamp_age_s,
                                self.geometries, images)
            truth = FrameTruth(fid, t_rel, t_avail, (float(d[0]), float(d[1]), float(d[2])),
                               visible)
            self.sent.append(truth)
            self._writer.write(data)
            await self._writer.drain()
        return truth

    async def _read_commands(self) -> None:
        assert self._reader is not None
        try:
            while True:
                cmd = await read_command(self._reader)
                if cmd is None:
                    break
                self.commands.append(cmd.model_dump())
                if cmd.cmd == "acquire":
                    await self._stop_stream()
                    self._stream_task = asyncio.create_task(
                        self._stream(float(cmd.rate_hz or 10.0)), name="sim-kv stream")
                else:
                    await self._stop_stream()
        except (KvProtocolError, ConnectionError, OSError) as exc:
            log.warning("simulated kV imager: link from igrtd ended: %s", exc)
        finally:
            await self._stop_stream()

    async def _stop_stream(self) -> None:
        task, self._stream_task = self._stream_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # The stream's own end is swallowed; a cancel of the caller itself (close
                # cancelling the command reader while it stops a stream) is not: swallowed,
                # the reader went on waiting for igrtd's next command and close for it.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except (ConnectionError, OSError):
                pass

    async def _stream(self, rate_hz: float) -> None:
        """Frames on schedule from now (beam-on): the scenario's, then regular ones."""
        period = 1.0 / rate_hz
        t0 = time.monotonic() + 0.02
        self.t0 = t0
        if self.scenario is not None:
            schedule = self.scenario.schedule(self._rng)
            end = self.scenario.duration_s
        else:
            schedule, end = [], 0.0
        k = 0
        try:
            while True:
                if k < len(schedule):
                    t_rel, visible = schedule[k]
                else:
                    if self.scenario is not None and not self.scenario_done.is_set():
                        self.scenario_done.set()
                    t_rel = end + (k - len(schedule) + 1) * period
                    visible = self.marker_visible
                k += 1
                if self.scenario is not None:
                    d = np.asarray(self.scenario.displacement(t_rel), dtype=float)
                else:
                    d = np.asarray(self.displacement, dtype=float)
                    visible = self.marker_visible
                # Rendered ahead of its due time: the render is not part of the latency.
                images = await asyncio.to_thread(self.renderer.render, d, visible, self._scene())
                delay = t0 + t_rel - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                changed = self.scenario is None and (  # a test may have changed the scene
                    not np.allclose(d, self.displacement) or visible != self.marker_visible)
                if changed:
                    d = np.asarray(self.displacement, dtype=float)
                    visible = self.marker_visible
                    images = await asyncio.to_thread(self.renderer.render, d, visible,
                                                     self._scene())
                await self._send(images, d, visible, t_rel)
        except (ConnectionError, OSError) as exc:
            log.warning("simulated kV imager: stream ended: %s", exc)


# ---------------------------------------------------------------------------
# A monitored beam-on period through igrtd (demo, bench)
# ---------------------------------------------------------------------------


@dataclass
class IgrtdRun:
    """A scenario run through igrtd, checked against the truth."""

    result: RunResult
    # Frame written by the imaging system -> sim PLC beam-hold coil set/cleared,
    # for every deviation hold / in-tolerance release igrtd commanded.
    hold_latencies_s: list[float]
    release_latencies_s: list[float]
    summary: dict[str, Any]  # igrtd's monitor_stop reply, without the records
    log_path: Path


def views_config(geometries: Sequence[KvGeometry]) -> list[dict[str, Any]]:
    """The room configuration's `monitoring.views` for the simulated imager's geometry."""
    return [{"angle_deg": g.angle_deg, "sad_mm": g.sad_mm, "sid_mm": g.sid_mm,
             "size_px": list(g.size_px), "pixel_mm": g.pixel_mm,
             "offset_mm": list(g.offset_mm)} for g in geometries]


def monitoring_config(scenario: MotionScenario, policy: BeamHoldPolicy,
                      geometries: Sequence[KvGeometry]) -> dict[str, Any]:
    """The room configuration's monitoring section for a scenario and policy."""
    return {
        "frame_rate_hz": round(1.0 / scenario.frame_period_s, 6),
        "tolerance_mm": policy.tolerance_mm,
        "axis_tolerance_mm": policy.axis_tolerance_mm,
        "debounce_s": policy.debounce_s,
        "release_after_s": policy.release_after_s,
        "release_margin_mm": policy.release_margin_mm,
        "max_image_age_s": policy.max_image_age_s,
        "views": views_config(geometries),
    }


def _control(sock: Path, cmd: str, **args: Any) -> dict[str, Any]:
    from daemon.control import ControlClient

    with ControlClient(sock, "alice", timeout_s=20.0) as c:
        reply = c.call(cmd, **args)
    if not reply["ok"]:
        raise RuntimeError(f"igrtd refused {cmd}: {reply['error']}")
    result: dict[str, Any] = reply["result"]
    return result


def _wait(pred: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.02)


def run_through_igrtd(
    scenario: MotionScenario,
    policy: BeamHoldPolicy,
    work_dir: Path,
    *,
    seed: int = 0,
    geometries: Sequence[KvGeometry] = MONITOR_PAIR,
    markers_mm: Sequence[Sequence[float]] = MARKERS_MM,
    target_mm: Sequence[float] = TARGET_MM,
    margin_mm: float = 0.5,
    latency_bound_s: float | None = 0.1,
    begin: Callable[[Path], Any] | None = None,
    end: Callable[[Path], dict[str, Any]] | None = None,
) -> IgrtdRun:
    """SimRoom (couch on a pty, room PLC on Modbus TCP) + igrtd as its own process +
    this simulated imaging system streaming the scenario to igrtd's imager socket.

    `begin(socket)` starts monitoring (default: monitor_start over the control
    socket) and `end(socket)` stops it and returns igrtd's reply including
    records (default: monitor_stop with include_records)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    state = work_dir / "state"
    log_path = work_dir / "igrtd.log"
    # The simulated PLC's server logs a frame dump when igrtd goes away mid-request at
    # the end of the run; that is expected here and only clutters the report.
    modbus_log = logging.getLogger("pymodbus")
    level = modbus_log.level
    modbus_log.setLevel(logging.CRITICAL)
    try:
        return _run_through_igrtd(scenario, policy, work_dir, state, log_path, seed=seed,
                                  geometries=geometries, markers_mm=markers_mm,
                                  target_mm=target_mm, margin_mm=margin_mm,
                                  latency_bound_s=latency_bound_s, begin=begin, end=end)
    finally:
        modbus_log.setLevel(level)


def _run_through_igrtd(
    scenario: MotionScenario,
    policy: BeamHoldPolicy,
    work_dir: Path,
    state: Path,
    log_path: Path,
    *,
    seed: int,
    geometries: Sequence[KvGeometry],
    markers_mm: Sequence[Sequence[float]],
    target_mm: Sequence[float],
    margin_mm: float,
    latency_bound_s: float | None,
    begin: Callable[[Path], Any] | None,
    end: Callable[[Path], dict[str, Any]] | None,
) -> IgrtdRun:
    from daemon.control import ControlClient
    from sim.room import DaemonProcess, SimRoom

    with SimRoom(with_plc=True) as room:
        cfg = room.room_config(state, monitoring=monitoring_config(scenario, policy, geometries))
        daemon = DaemonProcess(cfg, state, log_path).start()
        kv = SimKvImager(state / "kv.sock", geometries, markers_mm, seed=seed, scenario=scenario)
        try:
            room.run(kv.connect())
            sock = daemon.socket_path
            with ControlClient(sock, "alice") as c:
                c.call("open_session", patient_id="DEMO-MON", plan_uid="PLAN-MON",
                       frame_of_reference_uid="FOR-MON", iso=[0.0, 0.0, 0.0],
                       patient_position="HFS", manual_override="simulated room: no planning system")

                def ready() -> bool:
                    st = c.call("monitor_status")["result"]
                    return bool(st["imager"]["connected"] and st["beam_hold_output"] is not None)

                _wait(ready, 10.0, "igrtd did not see the room PLC and the imaging system")
            n0 = room.call(lambda: len(room.plc.coil_changes))
            if begin is None:
                _control(sock, "monitor_start", markers_mm=[list(m) for m in markers_mm],
                         target_mm=list(target_mm))
            else:
                begin(sock)
            _wait(lambda: room.call(kv.scenario_done.is_set), scenario.duration_s + 20.0,
                  "the scenario did not finish")
            if end is None:
                stopped = _control(sock, "monitor_stop", include_records=True)
            else:
                stopped = end(sock)
            coil = room.call(lambda: [(t, v) for t, n, v in room.plc.coil_changes[n0:]
                                      if n == "beam_hold"])
            sent = room.call(lambda: list(kv.sent))
            t0 = room.call(lambda: kv.t0)
        finally:
            room.run(kv.close())
            daemon.stop()
    assert t0 is not None
    records = [FrameRecord(**{**r, "deviation_mm": None if r["deviation_mm"] is None
                              else tuple(r["deviation_mm"])}) for r in stopped["records"]]
    events = [HoldEvent(**{**e, "deviation_mm": None if e["deviation_mm"] is None
                           else tuple(e["deviation_mm"])}) for e in stopped["events"]]
    check = analyse(scenario, policy, sent, records, events, t0=t0, margin_mm=margin_mm,
                    coil_changes=coil, latency_bound_s=latency_bound_s)
    by_id = {f.frame_id: f for f in sent}
    holds: list[float] = []
    releases: list[float] = []
    for e in events:
        if e.frame_id is None or e.frame_id not in by_id:
            continue
        want = e.event == "beam_hold"
        t_sent = by_id[e.frame_id].t_available
        tc = next((t for t, v in coil if v == want and t >= t_sent), None)
        if tc is not None:
            (holds if want else releases).append(tc - t_sent)
    summary = {k: v for k, v in stopped.items() if k not in ("records", "events")}
    result = RunResult(scenario, policy, t0, sent, records, events, [], coil, check,
                       int(summary.get("frames_skipped", 0)))
    return IgrtdRun(result, holds, releases, summary, log_path)


LATENCY_TARGET_MS = 100.0


def monitor_scenario_via_igrtd(out_dir: Path, seed: int = 0, *, begin: Any = None,
                               end: Any = None) -> dict[str, Any]:
    """`make demo MODE=monitor`: the demo scenario through igrtd itself. The
    simulated imaging system streams 512 x 512 stereo frames to igrtd's imager
    socket; igrtd holds the beam through the simulated room PLC. Writes
    report.json and monitor_deviation.png to `out_dir`. `ok` needs no missed,
    late, spurious or unexplained hold and a hold latency p99 (frame written by
    the imaging system -> PLC coil set) within LATENCY_TARGET_MS."""
    policy = BeamHoldPolicy()
    out_dir.mkdir(parents=True, exist_ok=True)
    run = run_through_igrtd(demo_scenario(), policy, out_dir, seed=seed, begin=begin, end=end,
                            latency_bound_s=LATENCY_TARGET_MS / 1000.0)
    result = run.result
    rep = report(result)
    p50 = percentile_ms(run.hold_latencies_s, 50)
    p99 = percentile_ms(run.hold_latencies_s, 99)
    rep.update({
        "via": "igrtd (imager socket -> igrtd -> room PLC over Modbus TCP)",
        "monitor_hold_latency_via_daemon_ms": [round(x * 1000, 3) for x in run.hold_latencies_s],
        "monitor_hold_latency_via_daemon_p50_ms": p50,
        "monitor_hold_latency_via_daemon_p99_ms": p99,
        "monitor_release_latency_via_daemon_p99_ms": percentile_ms(run.release_latencies_s, 99),
        "latency_target_ms": LATENCY_TARGET_MS,
        "igrtd_summary": run.summary,
        "igrtd_log": str(run.log_path),
    })
    rep["ok"] = bool(result.check.ok and (p99 is None or p99 <= LATENCY_TARGET_MS))
    rep["plot"] = str(deviation_png(result, out_dir, "Target deviation during beam-on (igrtd)"))
    (out_dir / "report.json").write_text(json.dumps(rep, indent=2, default=float))
    return rep
