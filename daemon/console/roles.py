"""Which role may send which console command.

The MQTT front end checks this before anything reaches RoomCommands (defence
in depth: RoomService authorises again). The role comes from the daemon's
user registry, never from the token.
"""

from __future__ import annotations

from typing import get_args

from daemon.api import CommandName, Role

_ALL = frozenset(Role)
_OPERATORS = frozenset({Role.THERAPIST, Role.APPROVER})
# Everyone who is allowed near the couch may stop it; a viewer display may not.
_STOPPERS = frozenset({Role.THERAPIST, Role.APPROVER, Role.SERVICE})

ALLOWED_ROLES: dict[str, frozenset[Role]] = {
    "status": _ALL,
    "interlocks": _ALL,
    "propose": _OPERATORS,
    "confirm": _OPERATORS,
    "hold": _OPERATORS,
    # release only ever takes motion enable away, so it is as open as stop.
    "release": _STOPPERS,
    "stop": _STOPPERS,
    "reset": _STOPPERS,
    "approve": frozenset({Role.APPROVER}),
    "open_session": _OPERATORS,
    "close_session": _OPERATORS,
    "record_imaging": _OPERATORS,
    "register": _OPERATORS,
    # Service mode: service engineers only; the clinical workflow is locked out meanwhile.
    "enter_service": frozenset({Role.SERVICE}),
    "exit_service": frozenset({Role.SERVICE}),
    "jog": frozenset({Role.SERVICE}),
    "diag": frozenset({Role.SERVICE}),
    # Intrafraction monitoring (beam on / beam off) is run by the treating staff.
    "monitor_start": _OPERATORS,
    "monitor_stop": _OPERATORS,
    "monitor_status": _ALL,
    "arms": frozenset({Role.THERAPIST, Role.APPROVER, Role.SERVICE}),
}


def uncovered_commands() -> set[str]:
    """Commands of the daemon API with no role entry (a test keeps this empty;
    such a command is refused rather than allowed)."""
    return set(get_args(CommandName)) - set(ALLOWED_ROLES)


def may(role: Role, cmd: str) -> bool:
    return role in ALLOWED_ROLES.get(cmd, frozenset())


def allowed_roles(cmd: str) -> list[str]:
    return sorted(r.value for r in ALLOWED_ROLES.get(cmd, frozenset()))
