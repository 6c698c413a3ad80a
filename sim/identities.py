"""Who is who in the simulated room: the demo users and how each proves it.

The local control socket believes a user name only with a proof
(docs/operations.md, "Who is who on each front end"). The demo and the tests
run every console in one OS account, so:

* alice (therapist) is that OS account: her `local_uid` is this process's uid,
  and her plain requests are authenticated by the socket's peer credentials;
* bob (approver), sam (service) and vic (viewer) sign their requests with
  Ed25519 keys, exactly as on MQTT. Their public keys are in the room config;
  the private keys are written once per process to a private directory named
  by $IGRT_KEY_DIR, where `ControlClient` and igrtctl find `<user>.key`.

So a second approval by bob is a different proof than alice's confirmation,
as in a real room. The keys are derived from fixed seeds: they are demo keys,
never to be listed in a real room's configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from daemon.control import KEY_DIR_ENV

SIGNING_USERS = ("bob", "sam", "vic")
_ROLES = {"alice": "therapist", "bob": "approver", "sam": "service", "vic": "viewer"}


def demo_private_jwk(user: str) -> dict[str, str]:
    seed = hashlib.sha256(f"igrt demo key of {user}".encode()).digest()
    key = OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(seed))
    return {k: str(v) for k, v in key.as_dict(private=True).items()}


def demo_public_jwk(user: str) -> dict[str, str]:
    return {k: v for k, v in demo_private_jwk(user).items() if k != "d"}


def demo_users() -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = []
    for name, role in _ROLES.items():
        entry: dict[str, Any] = {"name": name, "role": role}
        if name == "alice":
            entry["local_uid"] = os.getuid()
        else:
            entry["public_key"] = demo_public_jwk(name)
        users.append(entry)
    return users


_installed: Path | None = None


def install_demo_keys() -> Path:
    """Write the signing users' private keys (0600) and point $IGRT_KEY_DIR at them.

    Once per process; children (igrtctl run by the demo or a test) inherit it.
    """
    global _installed
    if _installed is None:
        directory = Path(tempfile.mkdtemp(prefix="igrt-demo-keys-"))
        for user in SIGNING_USERS:
            fd = os.open(directory / f"{user}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(demo_private_jwk(user), f)
        _installed = directory
    os.environ[KEY_DIR_ENV] = str(_installed)
    return _installed
