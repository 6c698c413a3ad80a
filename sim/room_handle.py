"""What the control operations need of a simulated room, as a type of its own.

sim/stack.py (`SimulatedRoom`) starts the control server, and the control
operations, faults and server act on the room: were they to name
`SimulatedRoom` for their types, the modules would depend on each other in a
cycle (tests/test_import_cycles.py counts imports under TYPE_CHECKING too).
They name this protocol instead; `SimulatedRoom` satisfies it structurally.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sim.couch import SimCouchController
    from sim.kv_stream import SimKvImager
    from sim.patient_motion import PatientMotion
    from sim.plc import SimRoomPlc
    from sim.room_description import RoomDescription


@runtime_checkable
class RoomHandle(Protocol):
    """A running simulated room: its devices, world and run directory."""

    description: RoomDescription
    couch: SimCouchController | None
    plc: SimRoomPlc | None
    kv: SimKvImager | None
    patient: PatientMotion
    run_dir: Path
    timers: list[asyncio.TimerHandle]  # timed injections; cancelled by `clear` and at exit
    cache: dict[str, Any]  # expensive things ops build once (phantom, planning CT)

    def info(self) -> dict[str, Any]: ...

    def created_by_simulator(self) -> bool: ...

    async def reconnect_imager(self) -> None: ...
