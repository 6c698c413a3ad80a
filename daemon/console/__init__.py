"""MQTT console API: signed commands from treatment consoles (docs/console-api.md).

Daemon side: `MqttConsole` (server.py) with a `CommandVerifier` (tokens.py)
over a `UserRegistry` (users.py). Console side: `ConsoleClient` (client.py),
`generate_keypair` (keys.py). Message schemas: schemas.py.
"""

from daemon.console.client import CommandRefused, ConsoleClient, ConsoleError, ConsoleTimeout
from daemon.console.keys import generate_keypair, load_private_key
from daemon.console.schemas import SCHEMA_VERSION, export_schemas
from daemon.console.server import MqttConsole
from daemon.console.tokens import (
    CommandRejected,
    CommandVerifier,
    MemoryReplayCache,
    ReplayCache,
    sign_command,
)
from daemon.console.users import RegistryError, UserRegistry, add_user

__all__ = [
    "SCHEMA_VERSION",
    "CommandRefused",
    "CommandRejected",
    "CommandVerifier",
    "ConsoleClient",
    "ConsoleError",
    "ConsoleTimeout",
    "MemoryReplayCache",
    "MqttConsole",
    "RegistryError",
    "ReplayCache",
    "UserRegistry",
    "add_user",
    "export_schemas",
    "generate_keypair",
    "load_private_key",
    "sign_command",
]
