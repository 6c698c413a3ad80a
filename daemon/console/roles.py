"""Which role may send which command: a re-export of the core's table.

The role table is owned by the command registry (daemon/commands.py), not by
this MQTT package; the names stay importable from here for existing callers.
"""

from __future__ import annotations

from daemon.commands import ALLOWED_ROLES, allowed_roles, may

__all__ = ["ALLOWED_ROLES", "allowed_roles", "may"]
