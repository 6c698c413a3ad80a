"""The console server's configuration file (JSON), validated as a whole.

    {"listen": {"host": "127.0.0.1", "port": 8080},
     "broker_url": "wss://tr1-host:9443",
     "rooms": ["tr1", "tr2"]}

`rooms` is optional: the list of room ids the department view offers; null
(the default) lets the page discover them from the retained igrt/+/status.
`listen.port` 0 picks a free port (the start-up line tells which).

`tls` (optional: `{"cert_file": ..., "key_file": ...}`, PEM) serves the page
over HTTPS. A browser gives a page WebCrypto (the signing keys) only in a
secure context: https://, or http://localhost on the machine itself. So a
console on another machine than igrt-console needs `tls`, and then the broker
URL must be wss:// (a browser refuses ws:// from an https:// page).

`mqtt_bridge` (optional: `{"host": ..., "port": ..., "tls_ca": ...}`) serves MQTT
over WebSockets at `/mqtt`, bridged to the broker's TCP listener: Mosquitto 2.0's
own WebSockets listener delivers large messages (review images) slowly
(bridge.py). The page then fetches the review images over a second connection
to `/mqtt` (config.json `review_url`); commands, replies, state and hold-to-run
stay on `broker_url`, Mosquitto's own WebSockets listener, so nothing on the
motion path depends on the bridge (docs/console.md).

Every problem is reported as one line (`ConsoleConfigError`), never a
traceback. `broker_url` goes into the page's Content-Security-Policy
(connect-src), so it is checked strictly: ws:// or wss://, a host, an
optional port and path, nothing that could end a CSP source expression, and
no user name or password (config.json is readable by anyone who can load the
page).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safety import strict_json

MAX_BYTES = 64 * 1024
ROOM_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # as igrtd's RoomConfig.room
# Characters a URL in a CSP source list may carry here: no space, ';', ',', quotes.
_URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/\[\]%@-]+$")


class ConsoleConfigError(Exception):
    """The configuration cannot be used; str() is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ListenConfig(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253,
                      pattern=r"^[A-Za-z0-9.:-]+$",
                      description="address to bind (an IP address or a host name)")
    port: int = Field(default=8080, ge=0, le=65535, description="0: a free port")


class TlsConfig(_Strict):
    cert_file: Path = Field(strict=False, description="PEM certificate chain")
    key_file: Path = Field(strict=False, description="PEM private key")


class BridgeConfig(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253,
                      pattern=r"^[A-Za-z0-9.:-]+$", description="the broker's MQTT (TCP) listener")
    port: int = Field(default=1883, ge=1, le=65535)
    tls_ca: Path | None = Field(default=None, strict=False,
                                description="CA of the broker's TLS listener; absent: plain TCP")


class ConsoleWebConfig(_Strict):
    listen: ListenConfig = ListenConfig()
    tls: TlsConfig | None = Field(default=None, description="serve over HTTPS; absent: HTTP")
    mqtt_bridge: BridgeConfig | None = Field(
        default=None, description="serve MQTT over WebSockets at /mqtt, bridged to this "
        "broker listener (daemon/console_web/bridge.py); absent: no /mqtt")
    broker_url: str = Field(min_length=1, max_length=512,
                            description="the broker's WebSockets listener, ws:// or wss://")
    rooms: list[str] | None = Field(default=None, max_length=256)

    @field_validator("broker_url")
    @classmethod
    def _ws_url(cls, url: str) -> str:
        if not _URL_CHARS.match(url):
            raise ValueError("must be a plain ws:// or wss:// URL (no spaces, quotes, ';' or ',')")
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"scheme must be ws or wss, not {parts.scheme or 'none'!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry a user name or password (config.json is public)")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise ValueError("must not have a query or fragment")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ValueError("has an invalid port") from None
        return url

    @field_validator("rooms")
    @classmethod
    def _room_ids(cls, rooms: list[str] | None) -> list[str] | None:
        if rooms is None:
            return None
        for r in rooms:
            if not re.match(ROOM_PATTERN, r):
                raise ValueError(f"room id {r!r} must match {ROOM_PATTERN}")
        if len(set(rooms)) != len(rooms):
            raise ValueError("a room id is listed twice")
        return rooms

    @model_validator(mode="after")
    def _wss_with_tls(self) -> ConsoleWebConfig:
        if self.tls is not None and not self.broker_url.startswith("wss://"):
            raise ValueError("with tls the broker_url must be wss:// (a browser refuses "
                             "ws:// from an https:// page)")
        return self


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return " ".join(f"{where}: {msg}{tail}".split())


def parse_config(text: bytes | str, path: Path | str = "<config>") -> ConsoleWebConfig:
    try:
        data = strict_json.loads(text, max_depth=4, max_bytes=MAX_BYTES)
    except strict_json.JsonInputError as exc:
        raise ConsoleConfigError(f"{path}: not a valid configuration file: {exc}") from None
    if not isinstance(data, dict):
        raise ConsoleConfigError(f"{path}: expected a JSON object")
    try:
        return ConsoleWebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConsoleConfigError(f"{path}: {_first_problem(exc)}") from None


def load_config(path: Path) -> ConsoleWebConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConsoleConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(raw, path)
