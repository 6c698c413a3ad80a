"""Imager arms (kV source and flat-panel detector), driven through the room PLC.

The arms are room equipment on the PLC's safety circuit (their drives are
powered only while the e-stop chain is intact, and their parked switches are
interlock inputs), so the host commands them over the same Modbus link
rather than a link of their own: one device owns arm power and arm sensing.

This wrapper carries no policy. The daemon's MotionGate decides whether an
arm may move, by the rules:
- the couch never moves while an arm is not parked;
- an arm never moves while the couch moves.
"""

from __future__ import annotations

from drivers.plc import (
    ARM_POSITION_REGISTERS,
    ARMS,
    POSITION_FULL_SCALE,
    PlcSnapshot,
    RoomPlcClient,
)

PARKED_INPUTS: dict[str, str] = {arm: f"imager_{arm}_parked" for arm in ARMS}


class ImagerArms:
    """Both imager arms; they extend and retract together."""

    def __init__(self, plc: RoomPlcClient) -> None:
        self._plc = plc

    async def extend(self) -> None:
        """Command both arms out to the imaging position (the PLC drives them)."""
        await self._plc.command_arms(extend=True)

    async def retract(self) -> None:
        """Command both arms back to parked."""
        await self._plc.command_arms(extend=False)

    @property
    def parked(self) -> bool:
        """Both arms' parked switches closed, on a live link.

        The switches only: whether the couch may move also takes the position
        registers and the fault code into account, in safety.interlocks.judge_plc.
        """
        return _parked(self._plc.snapshot())

    @property
    def moving(self) -> bool:
        """Any arm moving; also True when the PLC cannot vouch (link down)."""
        return any(self._plc.snapshot().arms_moving.values())

    @property
    def extended(self) -> bool:
        """Both arms at full travel (exactly: a value beyond the map is not a position) and still."""
        return _extended(self._plc.snapshot())

    def positions_pct(self) -> dict[str, float | None]:
        """Per arm, percent of full travel (0 parked, 100 extended) as read, never clamped;
        None when unknown."""
        return dict(self._plc.snapshot().arm_position_pct)

    async def wait_parked(self, timeout_s: float) -> None:
        """Return once both arms are parked; TimeoutError after `timeout_s`."""
        await self._plc.wait_until(_parked, timeout_s)

    async def wait_extended(self, timeout_s: float) -> None:
        """Return once both arms are fully extended and still; TimeoutError after `timeout_s`."""
        await self._plc.wait_until(_extended, timeout_s)


def _parked(snap: PlcSnapshot) -> bool:
    return snap.link_ok and all(snap.inputs[name].closed for name in PARKED_INPUTS.values())


def _extended(snap: PlcSnapshot) -> bool:
    regs = snap.registers
    return (
        snap.link_ok
        and regs is not None
        and not any(snap.arms_moving.values())
        and all(regs[reg] == POSITION_FULL_SCALE for reg in ARM_POSITION_REGISTERS.values())
    )
