"""The rig's simulated devices, the couch controller (pty) and the room PLC
(Modbus TCP), in a child process of their own.

Why not in the test process: that process also runs the consoles (the
hold-to-run thread, confirmations, status polls) and the invariant checker.
Sharing one GIL with them, the simulated couch stamped a STOP milliseconds
after it had crossed the pty, and the console thread stamped a hold before it
had left: both made igrtd look later than it was (a CI campaign reported a
hold-to-run stop at 53.8 ms against the 50 ms bound). In their own process the
simulators take their timestamps when the bytes arrive; CLOCK_MONOTONIC is the
same clock in every process, so the checker compares them with the console's.

The rig reaches the devices only through the named operations in `OPS`, each
run on the simulators' loop thread (where their own timestamps are taken), over
a multiprocessing pipe. When the test process dies the pipe closes and the
child stops its devices and exits.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Self

from sim.room import SimRoom, raise_priority

from .faults import ACTIONS


def _snapshot(couch: Any, plc: Any) -> tuple[float, dict[str, bool], int, int, Any]:
    """Now, the PLC's inputs, how long both records are, and the couch's true pose."""
    return (time.monotonic(), plc.inputs(), len(plc.input_changes),
            len(couch.executed_commands), couch.pose)


def _since(log: Any, t0: float) -> list[Any]:
    """The samples of `log` (in time order) from t0 on, read from the newest end:
    scanning the whole 100,000-sample motion log each batch stalled the simulated
    couch and PLC long enough to fake a lost heartbeat late in a long run."""
    out = []
    for m in reversed(log):
        if m.t < t0:
            break
        out.append(m)
    out.reverse()
    return out


def _collect(couch: Any, plc: Any, n_exec: int, t0: float, n_changes: int) -> tuple[Any, ...]:
    """The device-side records of a batch: executed commands, motion samples, PLC
    input changes, and when a STATUS carrying an injected pose jump left the couch."""
    return (couch.executed_commands[n_exec:], _since(couch.motion_log, t0),
            plc.input_changes[n_changes:],
            [t for t in couch.pose_jumps_reported if t >= t0])


def _inject(couch: Any, plc: Any, kind: str, value: Any) -> tuple[float, Any]:
    t = time.monotonic()
    return t, ACTIONS[kind](couch, plc, value)


def _restore(couch: Any, plc: Any) -> float:
    """Every fault cleared, every input safe; returns when."""
    t = time.monotonic()
    couch.clear_injections()
    plc.resume_heartbeat()
    plc.set_response_delay(0.0)
    plc.set_fault_code(0)
    plc.clear_raw_registers()
    for name in ("imager_kv_source_parked", "imager_detector_parked"):
        plc.release_input(name)
    for name in ("door_closed", "estop_chain_ok", "collision_pads_clear",
                 "motion_enable_pressed"):
        plc.set_input(name, True)
    return t


def _executed_since(couch: Any, _plc: Any, t0: float, kind: str | None) -> list[tuple[float, str]]:
    out = []
    for e in reversed(couch.executed_commands):
        if e.t < t0:
            break
        if kind is None or e.kind == kind:
            out.append((e.t, e.kind))
    out.reverse()
    return out


OPS: dict[str, Callable[..., Any]] = {
    "snapshot": _snapshot,
    "collect": _collect,
    "inject": _inject,
    "restore": _restore,
    "moving": lambda couch, _plc: bool(couch.is_moving),
    "pose": lambda couch, _plc: couch.pose,
    "executed_since": _executed_since,
    "press_motion_enable": lambda _couch, plc: plc.press_motion_enable(),
    "plc_reads": lambda _couch, plc: int(plc.requests_served),
}


def _serve(conn: Connection, couch_kwargs: dict[str, Any]) -> None:
    """The child: start the devices, report their ports, run operations until told
    to stop or until the test process has gone (the pipe closes)."""
    # The simulators stand for devices with processors of their own: at igrtd's
    # priority the host's other work (the test process, the other room) cannot
    # delay the timestamps they take.
    raise_priority(0)
    room = SimRoom(with_plc=True, couch_kwargs=couch_kwargs)
    try:
        room.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ok", (room.couch.device_path, room.couch.baudrate, room.plc.port)))
        served = 0
        while True:
            served += 1
            if served % 500 == 0:
                # The simulators' records only grow (executed commands, input
                # changes): kept out of the collector, a full collection does not
                # stall the PLC cycle for a whole staleness limit in a long run.
                gc.freeze()
            try:
                name, args = conn.recv()
            except EOFError:
                return
            if name == "stop":
                return
            try:
                result = room.call(functools.partial(OPS[name], room.couch, room.plc, *args))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            else:
                conn.send(("ok", result))
    finally:
        room.stop()


class DeviceProcess:
    """The simulated couch and PLC in a child process; `op(name, *args)` runs one
    of `OPS` there and returns its result (RuntimeError with the child's one line
    if it failed)."""

    def __init__(self, couch_kwargs: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded test process
        self._conn, self._child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(self._child_conn, couch_kwargs),
                                 daemon=True, name="rig-devices")
        self._lock = threading.Lock()
        self.couch_port = ""
        self.couch_baudrate: int | None = None  # None: an instant pty, no wire model
        self.plc_port = 0

    def start(self, timeout_s: float = 60.0) -> Self:
        self._proc.start()
        self._child_conn.close()
        self.couch_port, self.couch_baudrate, self.plc_port = self._reply("start", timeout_s)
        return self

    def op(self, name: str, *args: Any, timeout_s: float = 10.0) -> Any:
        with self._lock:
            self._conn.send((name, args))
            return self._reply(name, timeout_s)

    def _reply(self, name: str, timeout_s: float) -> Any:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"simulated devices: no answer to {name} within {timeout_s:g} s")
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"simulated devices: the process ended (exit code "
                               f"{self._proc.exitcode}) before answering {name}") from None
        if status != "ok":
            raise RuntimeError(f"simulated devices: {name}: {value}")
        return value

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            with self._lock:
                self._conn.send(("stop", ()))
        except OSError:
            pass  # the child has gone already
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
