"""The one list of what is secret, and how a bundle keeps it out.

Keys named like password/secret/token/private/credential are replaced by
REDACTED, the content of any password file (and any string under a secret-named
key) is scrubbed from every text that goes into a bundle, and a user "public
key" that carries private JWK members is reported, not copied. The bundle
writer passes every member through `scrub`; this module is the only place that
decides what a secret is, so a new report field cannot bypass it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from daemon.audit import jsonable
from daemon.jsontypes import JsonObject, JsonValue

REDACTED = "<redacted>"
# Key names whose values are secrets. `public_key` is named to be shared.
_SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|private|credential|api_?key", re.IGNORECASE)
_PUBLIC_KEYS = frozenset({"public_key"})
# JWK members that only a private key has (RFC 7518 section 6).
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _is_secret_key(key: str) -> bool:
    return key not in _PUBLIC_KEYS and bool(_SECRET_KEY.search(key))


def redact(value: JsonValue, warnings: list[str], where: str = "") -> JsonValue:
    """`value` with every secret-named key's value replaced by REDACTED."""
    if isinstance(value, dict):
        out: JsonObject = {}
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if _is_secret_key(str(k)):
                out[k] = REDACTED if v is not None else None
            elif k == "public_key" and isinstance(v, dict):
                private = sorted(_PRIVATE_JWK_MEMBERS & set(v))
                if private:
                    warnings.append(f"{path} holds private key members {private}: "
                                    "not copied; replace it with the public key only")
                    out[k] = REDACTED
                else:
                    out[k] = redact(v, warnings, path)
            else:
                out[k] = redact(v, warnings, path)
        return out
    if isinstance(value, list):
        return [redact(v, warnings, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def config_json(config: object) -> JsonValue:
    """The room configuration as JSON (before redaction)."""
    if config is None:
        return None
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return jsonable(config)


def secret_strings(config: object) -> list[str]:
    """Secret values to scrub from every text that goes into a bundle:
    password-file contents and any string under a secret-named key."""
    found: list[str] = []

    def walk(v: JsonValue, secret: bool) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "public_key":
                    if isinstance(x, dict):  # only private JWK members of it are secret
                        for m in _PRIVATE_JWK_MEMBERS & set(x):
                            walk(x[m], True)
                    continue
                key_secret = _is_secret_key(str(k))
                if key_secret and isinstance(x, str) and k.endswith("_file"):
                    try:
                        content = Path(x).read_text(encoding="utf-8", errors="replace")
                    except OSError:
                        content = ""
                    found.extend(s for s in (content, content.strip()) if len(s) >= 4)
                walk(x, secret or key_secret)
        elif isinstance(v, list):
            for x in v:
                walk(x, secret)
        elif secret and isinstance(v, str) and len(v) >= 4:
            found.append(v)

    walk(config_json(config), False)
    # Longest first, so a secret that contains another is scrubbed whole.
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, REDACTED)
    return text
