"""The rig's simulated devices, the couch controller (pty) and the room PLC
(Modbus TCP), each in a child process of its own.

Why not in the test process: that process also runs the consoles (the
hold-to-run thread, confirmations, status polls) and the invariant checker.
Sharing one GIL with them, the simulated couch stamped a STOP milliseconds
after it had crossed the pty, and the console thread stamped a hold before it
had left: both made igrtd look later than it was (a CI campaign reported a
hold-to-run stop at 53.8 ms against the 50 ms bound). In their own processes the
simulators take their timestamps when the bytes arrive; CLOCK_MONOTONIC is the
same clock in every process, so the checker compares them with the console's.

Why two processes, not one: in a treatment room the couch controller and the
safety PLC are separate machines. In one process, a STOP frame arriving on the
couch pty waited behind the ~1,000 Modbus reads a second the same process
served for igrtd's 1 ms PLC poll (STOP written -> simulator receive p50 0.60 ms,
p99 1.46 ms, of which 0.15 ms is wire time): the rig charged igrtd's
interlock-to-STOP latency with its own queueing. Each simulator now has its own
interpreter, loop thread and scheduling priority, as each device has its own
processor.

The rig reaches the devices only through named operations, each run on the
loop thread of the simulator that owns the device (where its own timestamps are
taken), over a multiprocessing pipe: `COUCH_OPS` in the couch process,
`PLC_OPS` in the PLC process. `DeviceProcess.op` takes the rig's names (`OPS`):
one that needs one device goes to its process; one that needs both (snapshot,
collect, restore) is asked of both processes at once and composed here; an
injected fault goes to the process of the device its fault touches (the split
of sim/control_faults.apply). When the test process dies the pipes close and
each child stops its device and exits.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Literal, Self

from sim import control_faults as cf
from sim.room import SimRoom, raise_priority

from .faults import ACTIONS, FAULTS

Device = Literal["couch", "plc"]


# --------------------------------------------------------- in the couch process
def _couch_snapshot(couch: Any) -> tuple[float, int, Any]:
    """Now, how long the executed-command record is, and the couch's true pose."""
    return time.monotonic(), len(couch.executed_commands), couch.pose


def _since(log: Any, t0: float) -> list[Any]:
    """The samples of `log` (in time order) from t0 on, read from the newest end:
    scanning the whole 100,000-sample motion log each batch stalled the simulated
    couch long enough to fake a lost heartbeat late in a long run."""
    out = []
    for m in reversed(log):
        if m.t < t0:
            break
        out.append(m)
    out.reverse()
    return out


def _couch_collect(couch: Any, n_exec: int, t0: float) -> tuple[Any, ...]:
    """The couch's records of a batch: executed commands, motion samples, and when a
    STATUS carrying an injected pose jump left the couch."""
    return (couch.executed_commands[n_exec:], _since(couch.motion_log, t0),
            [t for t in couch.pose_jumps_reported if t >= t0])


def _couch_inject(couch: Any, kind: str, value: Any) -> tuple[float, Any]:
    t = time.monotonic()
    return t, ACTIONS[kind](couch, None, value)


def _couch_restore(couch: Any) -> float:
    t = time.monotonic()
    couch.clear_injections()
    return t


def _executed_since(couch: Any, t0: float, kind: str | None) -> list[tuple[float, str]]:
    out = []
    for e in reversed(couch.executed_commands):
        if e.t < t0:
            break
        if kind is None or e.kind == kind:
            out.append((e.t, e.kind))
    out.reverse()
    return out


COUCH_OPS: dict[str, Callable[..., Any]] = {
    "snapshot": _couch_snapshot,
    "collect": _couch_collect,
    "inject": _couch_inject,
    "restore": _couch_restore,
    "moving": lambda couch: bool(couch.is_moving),
    "controller_state": lambda couch: str(couch.state),
    "pose": lambda couch: couch.pose,
    "executed_since": _executed_since,
}


# ----------------------------------------------------------- in the PLC process
def _plc_snapshot(plc: Any) -> tuple[float, dict[str, bool], int]:
    """Now, the PLC's inputs, and how long its input-change record is."""
    return time.monotonic(), plc.inputs(), len(plc.input_changes)


def _plc_inject(plc: Any, kind: str, value: Any) -> tuple[float, Any]:
    t = time.monotonic()
    return t, ACTIONS[kind](None, plc, value)


def _plc_restore(plc: Any) -> float:
    """Every PLC fault cleared, every input safe; returns when."""
    t = time.monotonic()
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


PLC_OPS: dict[str, Callable[..., Any]] = {
    "snapshot": _plc_snapshot,
    "collect": lambda plc, n_changes: plc.input_changes[n_changes:],
    "inject": _plc_inject,
    "restore": _plc_restore,
    "press_motion_enable": lambda plc: plc.press_motion_enable(),
    "plc_reads": lambda plc: int(plc.requests_served),
}


def _serve(conn: Connection, device: Device, kwargs: dict[str, Any]) -> None:
    """A child: start its one device, report where it is, run operations until told
    to stop or until the test process has gone (the pipe closes)."""
    # The simulators stand for devices with processors of their own: at igrtd's
    # priority the host's other work (the test process, the other room) cannot
    # delay the timestamps they take.
    raise_priority(0)
    if device == "couch":
        room = SimRoom(couch_kwargs=kwargs)
        ops = COUCH_OPS
    else:
        room = SimRoom(with_couch=False, with_plc=True, plc_kwargs=kwargs)
        ops = PLC_OPS
    try:
        room.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        dev = room.couch if device == "couch" else room.plc
        conn.send(("ok", (dev.device_path, dev.baudrate) if device == "couch" else dev.port))
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
                result = room.call(functools.partial(ops[name], dev, *args))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            else:
                conn.send(("ok", result))
    finally:
        room.stop()


# ----------------------------------------------------------- in the test process
class _Child:
    """One simulator process and its pipe; `send` then `reply` runs one operation."""

    def __init__(self, device: Device, kwargs: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded test process
        self.device = device
        self.conn, self._child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(self._child_conn, device, kwargs),
                                daemon=True, name=f"rig-{device}")
        self.lock = threading.Lock()

    def start(self) -> None:
        self.proc.start()
        self._child_conn.close()

    def send(self, name: str, args: tuple[Any, ...]) -> None:
        self.conn.send((name, args))

    def reply(self, name: str, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"simulated {self.device}: no answer to {name} within "
                               f"{timeout_s:g} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"simulated {self.device}: the process ended (exit code "
                               f"{self.proc.exitcode}) before answering {name}") from None
        if status != "ok":
            raise RuntimeError(f"simulated {self.device}: {name}: {value}")
        return value

    def op(self, name: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        with self.lock:
            self.send(name, args)
            return self.reply(name, timeout_s)

    def ask_to_stop(self) -> None:
        try:
            with self.lock:
                self.conn.send(("stop", ()))
        except OSError:
            pass  # the child has gone already

    def join(self, timeout_s: float) -> None:
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


def fault_device(kind: str, value: Any) -> Device:
    """The device a named fault touches: the one sim/control_faults.apply gives it
    to. A fault that cannot be made (unknown kind, bad value) goes to the couch,
    whose process raises the error as before."""
    try:
        fault = FAULTS[kind](value)
    except Exception:  # noqa: BLE001 - raised again, with its one line, by the child
        return "couch"
    # The table's own split of PLC faults from couch faults (what apply() uses).
    return "plc" if isinstance(fault, cf._PLC_FAULTS) else "couch"


# The rig's operations (Rig.sim): each one device's, or composed of both.
_COUCH_ONLY = ("moving", "controller_state", "pose", "executed_since")
_PLC_ONLY = ("press_motion_enable", "plc_reads")
OPS = (*_COUCH_ONLY, *_PLC_ONLY, "snapshot", "collect", "inject", "restore")


class DeviceProcess:
    """The simulated couch and PLC, each in a child process; `op(name, *args)` runs
    one of `OPS` there and returns its result (RuntimeError with the child's one
    line if it failed)."""

    def __init__(self, couch_kwargs: dict[str, Any],
                 plc_kwargs: dict[str, Any] | None = None) -> None:
        self._couch = _Child("couch", couch_kwargs)
        self._plc = _Child("plc", plc_kwargs or {})
        self.couch_port = ""
        self.couch_baudrate: int | None = None  # None: an instant pty, no wire model
        self.plc_port = 0

    def start(self, timeout_s: float = 60.0) -> Self:
        self._couch.start()
        self._plc.start()
        try:
            self.couch_port, self.couch_baudrate = self._couch.reply("start", timeout_s)
            self.plc_port = self._plc.reply("start", timeout_s)
        except BaseException:
            self.stop()  # the other device is not left running
            raise
        return self

    def op(self, name: str, *args: Any, timeout_s: float = 10.0) -> Any:
        if name in _COUCH_ONLY:
            return self._couch.op(name, args, timeout_s)
        if name in _PLC_ONLY:
            return self._plc.op(name, args, timeout_s)
        if name == "inject":
            kind, value = args
            child = self._plc if fault_device(kind, value) == "plc" else self._couch
            return child.op(name, args, timeout_s)
        if name == "snapshot":
            # Both asked at once, t0 the earlier of the two: every record counted
            # after the snapshot is on or after t0.
            (t_c, n_exec, pose), (t_p, inputs, n_changes) = self._both(
                name, (), (), timeout_s)
            return min(t_c, t_p), inputs, n_changes, n_exec, pose
        if name == "collect":
            n_exec, t0, n_changes = args
            (executed, motion, jumps), changes = self._both(
                name, (n_exec, t0), (n_changes,), timeout_s)
            return executed, motion, changes, jumps
        if name == "restore":
            # When the clearing began: the earlier of the two devices' times.
            return min(self._both(name, (), (), timeout_s))
        raise RuntimeError(f"simulated devices: {name}: no such operation")

    def _both(self, name: str, couch_args: tuple[Any, ...], plc_args: tuple[Any, ...],
              timeout_s: float) -> tuple[Any, Any]:
        """One operation asked of both devices at once; (couch's answer, PLC's)."""
        with self._couch.lock, self._plc.lock:
            self._couch.send(name, couch_args)
            self._plc.send(name, plc_args)
            try:
                from_couch = self._couch.reply(name, timeout_s)
            finally:
                # Read the PLC's answer even after a couch error: the pipe stays in step.
                from_plc = self._plc.reply(name, timeout_s)
            return from_couch, from_plc

    def stop(self, timeout_s: float = 10.0) -> None:
        for child in (self._couch, self._plc):
            child.ask_to_stop()
        for child in (self._couch, self._plc):
            child.join(timeout_s)
