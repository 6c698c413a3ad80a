"""Room PLC register map (docs/protocols/room-plc.md): what each address on the
wire carries. Addresses are 0-based protocol addresses as they appear on the wire.

Constants only (and two pure accessors): the host driver, the daemon's reading of
a block and the simulator all take the map from here, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType

#: 3: register 9, the gantry angle, added; 2: registers 7-8, the opening counters,
#: added (map version 1 had none).
REGISTER_MAP_VERSION = 3
DEFAULT_DEVICE_ID = 1

#: Interlock inputs, "closed = safe = 1". Bit n of the status word and
#: discrete input n carry INTERLOCK_INPUTS[n].
INTERLOCK_INPUTS: tuple[str, ...] = (
    "door_closed",
    "estop_chain_ok",
    "collision_pads_clear",
    "motion_enable_pressed",
    "imager_kv_source_parked",
    "imager_detector_parked",
)
#: Imager arms, in register order.
ARMS: tuple[str, ...] = ("kv_source", "detector")
#: Status (not interlock) bits following the interlock bits: 1 = arm moving.
MOVING_BITS: tuple[str, ...] = ("imager_kv_source_moving", "imager_detector_moving")
#: All bits of the status word / discrete inputs, bit n = STATUS_BITS[n].
STATUS_BITS: tuple[str, ...] = INTERLOCK_INPUTS + MOVING_BITS
#: Coils, coil n = COILS[n]; the output echo register uses the same bits.
COILS: tuple[str, ...] = ("beam_hold", "motion_permit_lamp", "kv_source_extend", "detector_extend")
#: Arm position registers count 0.1 % of full travel: 0 parked, 1000 extended.
POSITION_FULL_SCALE = 1000
#: The gantry angle register counts 0.01 deg of the IEC 61217 gantry angle
#: (0 = beam from above), 0..35999: a full circle is 36000 counts.
GANTRY_COUNTS_PER_DEG = 100
GANTRY_FULL_CIRCLE = 360 * GANTRY_COUNTS_PER_DEG


class StatusRegister(IntEnum):
    """Holding registers 0..9: the status block read in one request per cycle."""

    STATUS_BITS = 0
    HEARTBEAT = 1
    FAULT_CODE = 2
    KV_SOURCE_POSITION = 3
    DETECTOR_POSITION = 4
    OUTPUT_ECHO = 5
    MAP_VERSION = 6
    ROOM_OPENINGS = 7
    ARM_OPENINGS = 8
    GANTRY_ANGLE = 9


STATUS_BLOCK_COUNT = len(StatusRegister)
#: Arm name -> its position register.
ARM_POSITION_REGISTERS: Mapping[str, StatusRegister] = MappingProxyType(
    dict(zip(ARMS, (StatusRegister.KV_SOURCE_POSITION, StatusRegister.DETECTOR_POSITION)))
)
#: Opening counters (docs/protocols/room-plc.md, "Short openings"): the PLC
#: counts every opening (1 -> 0) of each interlock input in a 4-bit field that
#: wraps 15 -> 0, so an opening that closed again before the host's next read is
#: still seen, as a changed count, in the same answer as the heartbeat.
OPENING_COUNTER_BITS = 4
OPENING_COUNTER_MASK = (1 << OPENING_COUNTER_BITS) - 1
#: input name -> (register, bit offset of its 4-bit opening counter).
OPENING_COUNTERS: Mapping[str, tuple[StatusRegister, int]] = MappingProxyType({
    name: (StatusRegister.ROOM_OPENINGS if i < 4 else StatusRegister.ARM_OPENINGS,
           OPENING_COUNTER_BITS * (i % 4))
    for i, name in enumerate(INTERLOCK_INPUTS)
})
#: The PLC program holds every opening of an interlock input visible on the
#: wire for at least this long (pulse stretching), so several host polls see
#: it even when they are late. A PLC guarantee the host does not rely on alone:
#: the opening counters catch what a late poll still misses.
MIN_OPEN_VISIBLE_S = 0.05
#: The inclusive range the register map documents for each status register.
#: The driver reports raw values and never clamps them; what a value outside
#: its range means is decided in safety.interlocks.judge_plc.
REGISTER_RANGES: Mapping[StatusRegister, tuple[int, int]] = MappingProxyType({
    StatusRegister.STATUS_BITS: (0, (1 << len(STATUS_BITS)) - 1),  # bits 8..15 reserved, read 0
    StatusRegister.HEARTBEAT: (0, 0xFFFF),
    StatusRegister.FAULT_CODE: (0, 0xFFFF),  # 0 = no fault, any other code is PLC-specific
    StatusRegister.KV_SOURCE_POSITION: (0, POSITION_FULL_SCALE),
    StatusRegister.DETECTOR_POSITION: (0, POSITION_FULL_SCALE),
    StatusRegister.OUTPUT_ECHO: (0, (1 << len(COILS)) - 1),  # bits 4..15 reserved, read 0
    StatusRegister.MAP_VERSION: (REGISTER_MAP_VERSION, REGISTER_MAP_VERSION),
    StatusRegister.ROOM_OPENINGS: (0, 0xFFFF),  # four 4-bit counters
    StatusRegister.ARM_OPENINGS: (0, 0xFF),  # two 4-bit counters; bits 8..15 reserved, read 0
    StatusRegister.GANTRY_ANGLE: (0, GANTRY_FULL_CIRCLE - 1),  # 0.01 deg; 360.00 is 0
})


def gantry_angle_deg(registers: tuple[int, ...] | list[int]) -> float | None:
    """The gantry angle in degrees from a status block; None when the register is
    outside its documented range (a value no one can vouch for is not an angle)."""
    value = registers[StatusRegister.GANTRY_ANGLE]
    low, high = REGISTER_RANGES[StatusRegister.GANTRY_ANGLE]
    return value / GANTRY_COUNTS_PER_DEG if low <= value <= high else None


def opening_count(registers: tuple[int, ...] | list[int], name: str) -> int:
    """The raw 4-bit opening counter of interlock input `name` in a status block."""
    reg, shift = OPENING_COUNTERS[name]
    return registers[reg] >> shift & OPENING_COUNTER_MASK
