"""The console's HTTP server: fixed routes, GET and HEAD only.

Why the standard library's `http.server.ThreadingHTTPServer` and no web
framework: the server has nothing to decide. It serves a handful of static
files and one JSON document built at start; there are no sessions, forms,
templates or API (the page talks to igrtd through the MQTT broker, every
command signed in the browser). A framework would add dependencies, and
their updates, to a treatment-room host for routing four paths. What a
framework would otherwise give is written out here and tested
(tests/console_web/test_server.py): path confinement, content types,
security headers, caching, one-line errors.

Routes (anything else is 404; methods other than GET and HEAD are 405):

| path | what |
| --- | --- |
| `/` | static/index.html |
| `/static/<name>` | a file under static/ (sub-directories allowed); no dotfiles, no `..`, no symlink leading out of static/, no directory listing, only known file types |
| `/vendor/mqtt.esm.js` | node_modules/mqtt/dist/mqtt.esm.js (`make setup` installs it); 503 when missing |
| `/config.json` | `{"v": 1, "broker_url": ..., "rooms": [...] or null, "review_url": "/mqtt" or null}`, `Cache-Control: no-store` |
| `/mqtt` | only with `mqtt_bridge` in the config: MQTT over WebSockets, bridged to the broker (bridge.py) |

Caching of files: `Cache-Control: no-cache` with an `ETag` and
`Last-Modified`, answering a matching conditional request with 304. The
browser revalidates every file on every load, so after an update of the page
it never runs an old module next to new ones (an ES module graph of mixed
versions is exactly the fault a treatment console must not have, and nothing
here carries a version in its URL); the revalidation is one small request per
file on the room network, no body.

With `tls` in the config it serves HTTPS (the TLS handshake runs in the
request's thread, with the request timeout: a client that stalls it holds no
one else up). A browser gives the page WebCrypto, which signs the commands,
only in a secure context: https://, or http://localhost on the same machine.

Every response carries the Content-Security-Policy of the contract (scripts,
styles and everything else from this origin only, MQTT to the broker's URL,
never framed), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
no-referrer` and `X-Frame-Options: DENY`. Errors are one line of text/plain.
Each request is logged as at most one line on stderr (none with quiet=True).
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import sys
import threading
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.console_web.bridge import Bridge, HandshakeRefused, check_handshake
from daemon.console_web.config import ConsoleConfigError, ConsoleWebConfig, TlsConfig

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
VENDOR_FILE = HERE / "node_modules" / "mqtt" / "dist" / "mqtt.esm.js"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
# One path segment under /static/: no dotfile, no "..", no escapes ("%2e%2e"),
# no backslash; a name a page's author writes.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_FILE_BYTES = 16 << 20
REQUEST_TIMEOUT_S = 30.0


def content_security_policy(broker_url: str) -> str:
    return ("default-src 'self'; script-src 'self'; style-src 'self'; "
            "img-src 'self' data: blob:; "
            f"connect-src 'self' {broker_url}; frame-ancestors 'none'")


class _NotServed(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ConsoleHandler(BaseHTTPRequestHandler):
    server: ConsoleHTTPServer
    server_version = "igrt-console"
    protocol_version = "HTTP/1.1"  # keep-alive: the page loads a few files at once
    timeout = REQUEST_TIMEOUT_S  # an idle or slow client does not hold a thread for ever

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # failures end this request only (handle_error)
        super().setup()

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    # ------------------------------------------------------------ methods
    def do_GET(self) -> None:  # http.server's naming
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse_method(self) -> None:
        self._send_text(HTTPStatus.METHOD_NOT_ALLOWED,
                        f"method {self.command} not allowed: GET and HEAD only",
                        extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    # ------------------------------------------------------------ routing
    def _serve(self, body: bool) -> None:
        if self.request_version == "HTTP/0.9":  # no headers in 0.9: no CSP, no content type
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/0.9 is not served")
            return
        path = _request_path(self.path)
        try:
            if path == "/mqtt" and self.server.bridge is not None:
                if not body:
                    raise _NotServed(HTTPStatus.UPGRADE_REQUIRED,
                                     "/mqtt is MQTT over WebSockets: an Upgrade request only")
                self._bridge(self.server.bridge)
                return
            if path == "/config.json":
                self._send_bytes(HTTPStatus.OK, self.server.config_document,
                                 "application/json", body, cache="no-store")
                return
            if path == "/":
                file = self._static_file("index.html")
            elif path.startswith("/static/"):
                file = self._static_file(path[len("/static/"):])
            elif path == "/vendor/mqtt.esm.js":
                file = self._vendor_file()
            else:
                raise _NotServed(HTTPStatus.NOT_FOUND, f"not found: {path[:200]}")
            self._send_file(file, body)
        except _NotServed as exc:
            self._send_text(exc.status, exc.reason, body=body)

    def _bridge(self, bridge: Bridge) -> None:
        try:
            accept, protocol = check_handshake(
                {k.lower(): v for k, v in self.headers.items()})
        except HandshakeRefused as exc:
            raise _NotServed(HTTPStatus(exc.status), exc.reason) from None
        if not bridge.reserve():
            raise _NotServed(HTTPStatus.SERVICE_UNAVAILABLE, "too many MQTT connections")
        try:
            try:
                broker = bridge.connect()
            except OSError as exc:
                raise _NotServed(HTTPStatus.BAD_GATEWAY, "the MQTT broker is not reachable: "
                                 f"{exc.strerror or type(exc).__name__}") from None
            self.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.send_header("Sec-WebSocket-Protocol", protocol)
            self.end_headers()
            self.close_connection = True
            self.connection.settimeout(None)  # MQTT keepalive decides how idle is too idle
            bridge.serve(self.connection, self.rfile, broker)
        finally:
            bridge.release()

    def _static_file(self, rel: str) -> Path:
        not_found = _NotServed(HTTPStatus.NOT_FOUND, f"not found: /static/{rel[:200]}")
        segments = rel.split("/")
        if not rel or not all(_SEGMENT.match(s) for s in segments):
            raise not_found
        if Path(segments[-1]).suffix not in CONTENT_TYPES:
            raise not_found
        root = self.server.static_dir
        candidate = root.joinpath(*segments)
        # A symlink may point anywhere: what it resolves to must still be under static/.
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(root):
            raise not_found
        return real

    def _vendor_file(self) -> Path:
        vendor = self.server.vendor_file
        if not vendor.is_file():
            raise _NotServed(HTTPStatus.SERVICE_UNAVAILABLE,
                             f"the MQTT client library is not installed ({vendor}): run "
                             "`make setup` (npm ci in daemon/console_web)")
        return vendor

    # ------------------------------------------------------------ responses
    def _send_file(self, path: Path, body: bool) -> None:
        not_found = _NotServed(HTTPStatus.NOT_FOUND, f"not found: {_request_path(self.path)[:200]}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise not_found from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
                raise not_found  # a directory (no listing), a device, a fifo
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"'
            last_modified = formatdate(st.st_mtime, usegmt=True)
            if self._not_modified(etag, st.st_mtime):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self._common_headers(cache="no-cache")
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", last_modified)
                self.end_headers()
                return
            data = f.read(MAX_FILE_BYTES) if body else b""
        self._send_bytes(HTTPStatus.OK, data, CONTENT_TYPES[path.suffix], body, cache="no-cache",
                         length=len(data) if body else st.st_size,
                         extra={"ETag": etag, "Last-Modified": last_modified})

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
            return inm.strip() == "*" or etag in (t.strip().removeprefix("W/")
                                                   for t in inm.split(","))
        ims = self.headers.get("If-Modified-Since")
        if ims is None:
            return False
        try:
            return int(mtime) <= parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError, OverflowError):
            return False

    def _common_headers(self, cache: str) -> None:
        self.send_header("Content-Security-Policy", self.server.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", cache)

    def _send_bytes(self, status: HTTPStatus, data: bytes, ctype: str, body: bool, *,
                    cache: str, length: int | None = None,
                    extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self._common_headers(cache)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _send_text(self, status: HTTPStatus, text: str, *, body: bool = True,
                   extra: dict[str, str] | None = None) -> None:
        line = (_printable(text) + "\n").encode()
        self._send_bytes(status, line, "text/plain; charset=utf-8", body, cache="no-store",
                         extra=extra)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unknown method, a
        header too long): one line of text, the security headers, connection closed."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # http.server writes no status line and no headers for HTTP/0.9, which is
            # also what it assumes of a request line it could not read: answer in 1.0.
            self.request_version = "HTTP/1.0"
        reason = message or status.phrase
        if status is HTTPStatus.NOT_IMPLEMENTED:
            status, reason = HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed: GET and HEAD only"
        body = self.command != "HEAD" and status >= 200 and status not in (
            HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED)
        extra = {"Connection": "close"}
        if status is HTTPStatus.METHOD_NOT_ALLOWED:
            extra["Allow"] = "GET, HEAD"
        self._send_text(status, reason, body=body, extra=extra)

    # ------------------------------------------------------------ logging
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.quiet:
            return
        code = getattr(code, "value", code)
        path = getattr(self, "path", None) or "-"  # unset for a malformed request line
        line = f"{self.address_string()} {self.command or '-'} {path[:300]} {code}"
        sys.stderr.write(_printable(line) + "\n")

    def log_error(self, format: str, *args: Any) -> None:
        # Every error is answered through send_error, whose response log_request has
        # logged already: one line per request at most.
        return

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(_printable(format % args) + "\n")


def _request_path(target: str) -> str:
    """The path of a request target, query and fragment cut off (`app.js?v=2`)."""
    try:
        return urlsplit(target).path
    except ValueError:
        return ""


def _printable(text: str) -> str:
    """One line, no control characters (a request line is outside input)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server's TLS context; ConsoleConfigError (one line) if the files do not do."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except ssl.SSLError as exc:  # an OSError too: first
        raise ConsoleConfigError(f"tls: {tls.cert_file} and {tls.key_file} are not a PEM "
                                 f"certificate and its key: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConsoleConfigError(f"tls: cannot read {exc.filename or tls.cert_file}: "
                                 f"{exc.strerror}") from None
    return ctx


class ConsoleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never delays a stop
    allow_reuse_address = True

    def __init__(self, config: ConsoleWebConfig, *, static_dir: Path = STATIC_DIR,
                 vendor_file: Path = VENDOR_FILE, quiet: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        """Binds at once (OSError if it cannot; ConsoleConfigError for a bad mqtt_bridge
        CA file). `tls`: from tls_context(config.tls)."""
        self.config = config
        self.tls = tls
        self.static_dir = Path(os.path.realpath(static_dir))
        self.vendor_file = Path(vendor_file)
        self.quiet = quiet
        self.csp = content_security_policy(config.broker_url)
        self.bridge: Bridge | None = None
        if config.mqtt_bridge is not None:
            try:
                self.bridge = Bridge(config.mqtt_bridge)
            except OSError as exc:  # ssl.SSLError too
                raise ConsoleConfigError(f"mqtt_bridge.tls_ca: {config.mqtt_bridge.tls_ca}: "
                                         f"{exc.strerror or exc}") from None
        self.config_document = json.dumps(
            {"v": 1, "broker_url": config.broker_url, "rooms": config.rooms,
             # The page's second connection, for the review images only (docs/console.md).
             "review_url": "/mqtt" if config.mqtt_bridge is not None else None}).encode()
        host = config.listen.host
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, config.listen.port), ConsoleHandler)
        if tls is not None:
            # The handshake happens in the handler's thread (ConsoleHandler.setup), not
            # in accept(), which runs in the one thread that serves every connection.
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (a reset, a TLS handshake refused, a timeout): at
        most one line, never a traceback."""
        if self.quiet:
            return
        exc = sys.exc_info()[1]
        sys.stderr.write(_printable(f"{client_address[0]} connection failed: "
                                    f"{type(exc).__name__}: {exc}"[:300]) + "\n")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}/"


def serve_in_thread(server: ConsoleHTTPServer) -> threading.Thread:
    """For tests and embedding: serve_forever on a daemon thread; server.shutdown() ends it."""
    t = threading.Thread(target=server.serve_forever, name="igrt-console", daemon=True)
    t.start()
    return t
