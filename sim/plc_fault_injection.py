"""Fault injection for the simulated room PLC (sim/plc.py's `SimRoomPlc`).

A mixin holding the fault-injection half of the simulator's scripting API:
frozen heartbeat, dropped or refused connections, delayed answers, Modbus
exception answers, fault codes and raw register values forced onto the wire.
`SimRoomPlc` owns the state these methods change (set up in its `__init__`);
the PLC cycle and the request handler read it.
"""

from __future__ import annotations

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer

from drivers.plc import STATUS_BLOCK_COUNT


class PlcFaultInjection:
    """The fault-injection methods of `SimRoomPlc` (sim/plc.py)."""

    _heartbeat_frozen: bool
    _server: ModbusTcpServer | None
    _refuse_connections: bool
    _response_delay_s: float
    _exception_code: ExcCodes | None
    _raw_registers: dict[int, int]
    fault_code: int

    def freeze_heartbeat(self, frozen: bool = True) -> None:
        self._heartbeat_frozen = frozen

    def resume_heartbeat(self) -> None:
        self._heartbeat_frozen = False

    def drop_connections(self) -> int:
        """Close every host connection now; returns how many were closed."""
        if self._server is None:
            return 0
        connections = list(self._server.active_connections.values())
        for conn in connections:
            conn.close()
        return len(connections)

    def refuse_connections(self, refuse: bool = True) -> None:
        """While set, every new connection is accepted and closed straight away."""
        self._refuse_connections = refuse
        if refuse:
            self.drop_connections()

    def set_response_delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"response delay {seconds} s must be >= 0 s")
        self._response_delay_s = seconds

    def exception_responses(self, on: bool = True,
                            code: ExcCodes = ExcCodes.DEVICE_FAILURE) -> None:
        """Answer every request with a Modbus exception (`code`) while on."""
        self._exception_code = code if on else None

    def set_fault_code(self, code: int) -> None:
        """Report fault `code` in register 2 (0 clears it), as a PLC's own diagnostics would."""
        if not 0 <= code <= 0xFFFF:
            raise ValueError(f"PLC fault code {code} is out of range 0..65535")
        self.fault_code = code

    def set_raw_register(self, address: int, value: int | None) -> None:
        """Force status register `address` to the raw `value` on the wire (None: release it).

        Any 16-bit value, including ones the register map does not allow (an arm
        position of 65535, reserved bits set): a confused or corrupted PLC. The
        simulated room itself is unchanged; a forced status word (register 0) is
        also what the discrete inputs answer.
        """
        if not 0 <= address < STATUS_BLOCK_COUNT:
            raise ValueError(
                f"PLC status register {address} is out of range 0..{STATUS_BLOCK_COUNT - 1}"
            )
        if value is None:
            self._raw_registers.pop(address, None)
            return
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"register value {value} does not fit 16 bits (0..65535)")
        self._raw_registers[address] = value

    def raw_registers(self) -> dict[int, int]:
        """The registers forced by set_raw_register: address -> value."""
        return dict(self._raw_registers)

    def clear_raw_registers(self) -> None:
        """Release every register forced by set_raw_register."""
        self._raw_registers.clear()
