"""Ed25519 key pairs for console users, stored as JWK JSON files.

The private key file is created owner-read-only; the public JWK is what an
administrator adds to the daemon's user registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from safety import strict_json

# A JWK is one flat object of a few short strings.
MAX_KEY_FILE_BYTES = 16384


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 private JWK."""


def generate_keypair(private_path: str | Path, public_jwk_path: str | Path) -> dict[str, str]:
    """Write a new Ed25519 key pair; refuses to overwrite. Returns the public JWK."""
    priv, pub = Path(private_path), Path(public_jwk_path)
    for p in (priv, pub):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key")
    key = OKPKey.generate_key("Ed25519")
    public = {k: str(v) for k, v in key.as_dict(private=False).items()}
    priv.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL + 0600 from the start: the private key is never world-readable,
    # not even for the moment between create and chmod.
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(key.as_dict(private=True), f)
        f.write("\n")
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_text(json.dumps(public, sort_keys=True) + "\n")
    return public


def load_private_key(path: str | Path) -> OKPKey:
    p = Path(path)
    try:
        obj = strict_json.loads(p.read_bytes(), max_depth=1, max_bytes=MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise KeyFileError(f"cannot read key {p}: {exc.strerror}") from None
    except strict_json.JsonInputError as exc:
        raise KeyFileError(f"key {p} is not an Ed25519 private JWK: {exc}") from None
    if not isinstance(obj, dict) or obj.get("kty") != "OKP" or obj.get("crv") != "Ed25519":
        raise KeyFileError(f"key {p} is not an Ed25519 JWK (kty OKP, crv Ed25519)")
    if "d" not in obj:
        raise KeyFileError(f"key {p} is a public key; signing needs the private key")
    try:
        return OKPKey.import_key(obj)
    except (JoseError, ValueError) as exc:
        raise KeyFileError(f"key {p} is invalid: {exc}") from None
