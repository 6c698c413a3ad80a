"""Simulated room safety PLC: the device side of docs/protocols/room-plc.md.

A real pymodbus TCP server with the documented register map, a PLC cycle
(heartbeat counter, imager arm drives), a scriptable scenario API for tests
and benchmarks, and fault injection (frozen heartbeat, dropped or refused
connections, delayed answers, Modbus exception answers, fault codes).

Input changes take effect on the wire immediately (not at the next PLC
cycle) and are timestamped in `input_changes`, so a benchmark can measure
"input changed on the PLC" to "STOP arrived at the couch" from one clock.
Like a real safety PLC program it makes short openings visible to the host
(docs/protocols/room-plc.md, "Short openings"): every opening of an interlock
input stays open on the wire for at least `min_open_s` (pulse stretching),
and is counted in the opening counters (registers 7-8). It also holds the
gantry (`gantry`, sim/plc_gantry.py: set or turned at a speed) and publishes
its angle in register 9.

Standalone, for service engineers: `python -m sim.plc [--port N]` prints
`host:port` and accepts commands on stdin (`help` lists them); that console
is sim/plc_cli.py.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.plc import (
    ARMS,
    COILS,
    DEFAULT_DEVICE_ID,
    INTERLOCK_INPUTS,
    MIN_OPEN_VISIBLE_S,
    MOVING_BITS,
    OPENING_COUNTER_MASK,
    OPENING_COUNTERS,
    POSITION_FULL_SCALE,
    REGISTER_MAP_VERSION,
    STATUS_BITS,
    STATUS_BLOCK_COUNT,
    StatusRegister,
)
from sim.plc_fault_injection import PlcFaultInjection
from sim.plc_gantry import SimGantry

ROOM_INPUTS: tuple[str, ...] = INTERLOCK_INPUTS[:4]  # set by the room, not by the arms
_FC_READ_COILS, _FC_READ_DI, _FC_READ_HR, _FC_READ_IR = 1, 2, 3, 4
_FC_WRITE_COIL, _FC_WRITE_COILS = 5, 15

#: A scenario step: (delay_s, callable) or (delay_s, input_name, closed).
Step = tuple[float, Callable[[], object]] | tuple[float, str, bool]


@dataclass(slots=True)
class _Arm:
    position: float = 0.0  # 0 parked .. 1 extended
    moving: bool = False


class SimRoomPlc(PlcFaultInjection):
    """The simulated PLC; use as `async with SimRoomPlc() as plc:`.

    The fault-injection methods (freeze_heartbeat ... clear_raw_registers) are
    in sim/plc_fault_injection.py."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cycle_s: float = 0.01,
        arm_travel_s: float = 1.0,
        device_id: int = DEFAULT_DEVICE_ID,
        min_open_s: float = MIN_OPEN_VISIBLE_S,
        gantry_deg: float = 0.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"simulated PLC port {port} is out of range 0..65535")
        if not 0.001 <= cycle_s <= 1.0:
            raise ValueError(f"simulated PLC cycle {cycle_s} s is out of range 0.001..1 s")
        if arm_travel_s <= 0:
            raise ValueError(f"imager arm travel time {arm_travel_s} s must be > 0 s")
        if not 0.0 <= min_open_s <= 1.0:
            raise ValueError(f"minimum visible opening {min_open_s} s is out of range 0..1 s")
        self.host = host
        #: Pulse stretching: an opening stays visible on the wire at least this long
        #: (0 turns it off, to prove the opening counters alone in tests).
        self.min_open_s = min_open_s
        self._requested_port = port
        self.port = port
        self.cycle_s = cycle_s
        self.arm_travel_s = arm_travel_s
        self.device_id = device_id

        # The idle room: door closed, e-stops fine, pads clear, nobody holding enable.
        self._bits: dict[str, bool] = {name: False for name in STATUS_BITS}
        for name in ("door_closed", "estop_chain_ok", "collision_pads_clear"):
            self._bits[name] = True
        self._bits["imager_kv_source_parked"] = True
        self._bits["imager_detector_parked"] = True
        self._forced: dict[str, bool] = {}  # stuck arm sensors
        # Pulse stretching: the input as the room sets it, while the wire still
        # shows it open (name -> closed), and when each input last opened on the wire.
        self._held_open: dict[str, bool] = {}
        self._opened_at: dict[str, float] = {}
        self.openings: dict[str, int] = {name: 0 for name in INTERLOCK_INPUTS}
        self._coils: dict[str, bool] = {name: False for name in COILS}
        self._arms = {arm: _Arm() for arm in ARMS}
        #: The gantry whose angle register 9 carries (IEC 61217, 0 = beam from above).
        self.gantry = SimGantry(gantry_deg)
        self.heartbeat = 0
        self.fault_code = 0
        self._heartbeat_frozen = False
        self._response_delay_s = 0.0
        self._exception_code: ExcCodes | None = None
        self._refuse_connections = False
        self._raw_registers: dict[int, int] = {}  # address -> value forced onto the wire

        #: (time.monotonic(), name, value) for every change visible on the wire.
        self.input_changes: list[tuple[float, str, bool]] = []
        #: (time.monotonic(), coil name, value) for every coil change written by a host.
        self.coil_changes: list[tuple[float, str, bool]] = []
        self.requests_served = 0
        self.connections_accepted = 0

        self._server: ModbusTcpServer | None = None
        self._cycle_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ life
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        device = SimDevice(
            self.device_id,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],  # coils
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],  # discrete inputs
                [SimData(0, count=STATUS_BLOCK_COUNT, values=0,  # holding: status, read-only
                         datatype=DataType.REGISTERS, readonly=True)],
                [SimData(0, count=STATUS_BLOCK_COUNT, values=0,  # input regs: same block
                         datatype=DataType.REGISTERS, readonly=True)],
            ),
            action=self._on_request,
        )
        self._server = ModbusTcpServer(
            device, address=(self.host, self._requested_port), trace_connect=self._on_connection
        )
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError:
            self._server = None
            raise OSError(
                f"simulated PLC cannot listen on {self.host}:{self._requested_port} "
                "(address in use or not available)"
            ) from None
        server_socket = self._server.transport.sockets[0]  # type: ignore[attr-defined]
        self.port = server_socket.getsockname()[1]
        self._cycle_task = asyncio.create_task(self._cycle(), name="sim-plc cycle")

    async def stop(self) -> None:
        if self._cycle_task is not None:
            self._cycle_task.cancel()
            try:
                await self._cycle_task
            except asyncio.CancelledError:
                pass
            self._cycle_task = None
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    # ---------------------------------------------------------- scenario API
    def set_input(self, name: str, closed: bool) -> None:
        """Set a room input; for an arm's parked/moving bit this forces a stuck sensor."""
        if name not in STATUS_BITS:
            raise ValueError(f"unknown PLC input {name!r}; known: {', '.join(STATUS_BITS)}")
        if name not in ROOM_INPUTS:
            self._forced[name] = closed
        self._set_bit(name, closed)

    def release_input(self, name: str) -> None:
        """Stop forcing an arm sensor: it follows the simulated arm again."""
        self._forced.pop(name, None)
        self._update_arm_bits()

    def input(self, name: str) -> bool:
        """The input as the wire shows it (an opening held by pulse stretching reads open)."""
        self._release_stretched(time.monotonic())
        return self._bits[name]

    def inputs(self) -> dict[str, bool]:
        self._release_stretched(time.monotonic())
        return dict(self._bits)

    def press_motion_enable(self) -> None:
        self.set_input("motion_enable_pressed", True)

    def release_motion_enable(self) -> None:
        self.set_input("motion_enable_pressed", False)

    def open_door(self) -> None:
        self.set_input("door_closed", False)

    def close_door(self) -> None:
        self.set_input("door_closed", True)

    def press_estop(self) -> None:
        self.set_input("estop_chain_ok", False)

    def reset_estop(self) -> None:
        self.set_input("estop_chain_ok", True)

    def touch_collision_pad(self) -> None:
        self.set_input("collision_pads_clear", False)

    def clear_collision_pad(self) -> None:
        self.set_input("collision_pads_clear", True)

    async def scenario(self, steps: Sequence[Step]) -> None:
        """Run steps in order; each delay is counted from the previous step."""
        for step in steps:
            delay = step[0]
            if delay > 0:
                await asyncio.sleep(delay)
            if len(step) == 3:
                self.set_input(step[1], step[2])  # type: ignore[misc]
            else:
                step[1]()  # type: ignore[operator]

    # ------------------------------------------------------------- outputs
    def coil(self, name: str) -> bool:
        return self._coils[name]

    def coils(self) -> dict[str, bool]:
        return dict(self._coils)

    def force_coil(self, name: str, value: bool) -> None:
        """Change an output from the PLC's side (its own logic, a key switch at the
        linac): hosts see it in the read-back, not as anything they wrote."""
        if name not in self._coils:
            raise ValueError(f"unknown coil {name!r}")
        if self._coils[name] != value:
            self._coils[name] = value
            self.coil_changes.append((time.monotonic(), name, value))

    def arm_position_pct(self, arm: str) -> float:
        return self._arms[arm].position * 100.0

    async def wait_coil(self, name: str, value: bool, timeout_s: float = 1.0) -> float:
        """Wait until a host has set coil `name` to `value`; returns when (monotonic)."""
        async with asyncio.timeout(timeout_s):
            while self._coils[name] != value:
                await asyncio.sleep(0.001)
        for t, n, v in reversed(self.coil_changes):
            if n == name and v == value:
                return t
        return time.monotonic()

    def clear_records(self) -> None:
        self.input_changes.clear()
        self.coil_changes.clear()

    # ------------------------------------------------------------ internals
    def _set_bit(self, name: str, value: bool) -> None:
        now = time.monotonic()
        self._release_stretched(now)  # keeps input_changes in time order
        if name in self.openings:
            if (value and not self._bits[name]
                    and now < self._opened_at.get(name, -1.0) + self.min_open_s):
                self._held_open[name] = True  # closes on the wire when the hold ends
                return
            # Counted as the wire shows it: opening again while still held open
            # is the same visible opening.
            self._held_open.pop(name, None)
            if not value and self._bits[name]:
                self._opened_at[name] = now
                self.openings[name] = (self.openings[name] + 1) & OPENING_COUNTER_MASK
        if self._bits[name] != value:
            self._bits[name] = value
            self.input_changes.append((now, name, value))

    def _release_stretched(self, now: float) -> None:
        """Close on the wire the inputs that closed while their opening was held."""
        for name in [n for n in self._held_open if now >= self._opened_at[n] + self.min_open_s]:
            del self._held_open[name]
            self._bits[name] = True
            # Visible from the moment the hold ended: every read from then on shows it.
            self.input_changes.append((self._opened_at[name] + self.min_open_s, name, True))

    def status_word(self) -> int:
        self._release_stretched(time.monotonic())
        return sum(1 << i for i, name in enumerate(STATUS_BITS) if self._bits[name])

    def opening_registers(self) -> dict[int, int]:
        """Registers 7-8: each interlock input's 4-bit opening counter."""
        regs = {int(StatusRegister.ROOM_OPENINGS): 0, int(StatusRegister.ARM_OPENINGS): 0}
        for name, (reg, shift) in OPENING_COUNTERS.items():
            regs[int(reg)] |= self.openings[name] << shift
        return regs

    def _output_word(self) -> int:
        return sum(1 << i for i, name in enumerate(COILS) if self._coils[name])

    def status_block(self) -> list[int]:
        block = [0] * STATUS_BLOCK_COUNT
        block[StatusRegister.STATUS_BITS] = self.status_word()
        block[StatusRegister.HEARTBEAT] = self.heartbeat
        block[StatusRegister.FAULT_CODE] = self.fault_code
        for arm, reg in zip(ARMS, (StatusRegister.KV_SOURCE_POSITION,
                                   StatusRegister.DETECTOR_POSITION)):
            block[reg] = round(self._arms[arm].position * POSITION_FULL_SCALE)
        block[StatusRegister.OUTPUT_ECHO] = self._output_word()
        block[StatusRegister.MAP_VERSION] = REGISTER_MAP_VERSION
        for address, value in self.opening_registers().items():
            block[address] = value
        block[StatusRegister.GANTRY_ANGLE] = self.gantry.register_value()
        for address, value in self._raw_registers.items():
            block[address] = value
        return block

    async def _on_request(self, func_code: int, start_address: int, address: int, count: int,
                          registers: list[int], values: list[int] | list[bool] | None
                          ) -> ExcCodes | None:
        """pymodbus calls this before serving any request; registers are filled from the model."""
        self.requests_served += 1
        if self._response_delay_s > 0:
            await asyncio.sleep(self._response_delay_s)
        if self._exception_code is not None:
            return self._exception_code
        if func_code in (_FC_READ_HR, _FC_READ_IR):
            registers[:STATUS_BLOCK_COUNT] = self.status_block()
        elif func_code == _FC_READ_DI:
            registers[0] = self._raw_registers.get(StatusRegister.STATUS_BITS, self.status_word())
        elif func_code == _FC_READ_COILS:
            registers[0] = self._output_word()
        elif func_code in (_FC_WRITE_COIL, _FC_WRITE_COILS) and values is not None:
            if address + len(values) > len(COILS):
                return ExcCodes.ILLEGAL_ADDRESS
            now = time.monotonic()
            for i, value in enumerate(values):
                name = COILS[address + i]
                if self._coils[name] != bool(value):
                    self._coils[name] = bool(value)
                    self.coil_changes.append((now, name, bool(value)))
        return None

    def _on_connection(self, connected: bool) -> None:
        if connected:
            self.connections_accepted += 1
            if self._refuse_connections:
                asyncio.get_running_loop().call_soon(self.drop_connections)

    async def _cycle(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        last = next_at
        while True:
            next_at += self.cycle_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = loop.time()
            if next_at < now - self.cycle_s:
                next_at = now  # fell behind (loaded machine): skip, do not burst
            if not self._heartbeat_frozen:
                self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self._release_stretched(time.monotonic())
            self._drive_arms(now - last)
            last = now

    def _drive_arms(self, dt: float) -> None:
        # The PLC's own hardware interlock: arm drives are powered only while the
        # e-stop chain is intact. Whether an arm *may* move is the host's policy.
        powered = self._bits["estop_chain_ok"]
        step = dt / self.arm_travel_s
        for arm_name, arm in self._arms.items():
            target = 1.0 if self._coils[f"{arm_name}_extend"] else 0.0
            if powered and arm.position != target:
                if target > arm.position:
                    arm.position = min(target, arm.position + step)
                else:
                    arm.position = max(target, arm.position - step)
                arm.moving = arm.position != target
            else:
                arm.moving = False
        self._update_arm_bits()

    def _update_arm_bits(self) -> None:
        for arm_name, parked_bit, moving_bit in zip(
            ARMS, INTERLOCK_INPUTS[4:], MOVING_BITS
        ):
            arm = self._arms[arm_name]
            parked = arm.position == 0.0 and not arm.moving
            self._set_bit(parked_bit, self._forced.get(parked_bit, parked))
            self._set_bit(moving_bit, self._forced.get(moving_bit, arm.moving))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for callers that need it before starting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    # `python -m sim.plc` runs this file as __main__, not as sim.plc: hand over to
    # the console, which imports sim.plc itself (looked up by name, so this module
    # does not import its own importer).
    import importlib

    sys.exit(importlib.import_module("sim.plc_cli").main())
