"""igrt-console, the browser console's static server, as a real process on a free port."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.parent_death import die_with_parent

from .process import stop_console

REPO = Path(__file__).resolve().parents[2]
BROKER_URL = "ws://127.0.0.1:9001"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       f"connect-src 'self' {BROKER_URL}; frame-ancestors 'none'")
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _config(tmp: Path, **changes: Any) -> Path:
    cfg: dict[str, Any] = {"listen": {"host": "127.0.0.1", "port": 0},
                           "broker_url": BROKER_URL, "rooms": None}
    cfg.update(changes)
    path = tmp / "console.json"
    path.write_text(json.dumps(cfg))
    return path


def _page(tmp: Path) -> tuple[Path, Path]:
    """A static dir with every served type, a dotfile, a sub-directory and symlinks in
    and out; a vendor file."""
    static = tmp / "static"
    (static / "sub").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>igrt</title>")
    (static / "app.js").write_text("export const x = 1;\n")
    (static / "app.css").write_text("body { margin: 0 }\n")
    (static / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (static / "logo.png").write_bytes(PNG)
    (static / "data.json").write_text("{}")
    (static / "sub" / "mod.js").write_text("export default 2;\n")
    (static / ".secret.js").write_text("hidden")
    (static / "notes.py").write_text("not a served type")
    (tmp / "outside.js").write_text("outside")
    (static / "out.js").symlink_to(tmp / "outside.js")
    (static / "in.js").symlink_to(static / "app.js")
    vendor = tmp / "mqtt.esm.js"
    vendor.write_text("export default {connect() {}};\n")
    return static, vendor


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "igrt-console test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp / "console.crt", tmp / "console.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class Console:
    def __init__(self, tmp: Path, *args: str, config: Path | None = None,
                 scheme: str = "http") -> None:
        static, vendor = _page(tmp)
        self.static, self.vendor = static, vendor
        cmd = [sys.executable, "-m", "daemon.console_web", "--config",
               str(config or _config(tmp)), "--static-dir", str(static),
               "--vendor-file", str(vendor), *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
            # SIGTERM when the test process dies, SIGKILL included: no orphan server.
            preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(f"igrt-console listening on {scheme}://127.0.0.1:"):
            self.proc.kill()
            raise AssertionError(f"no start line: {line!r} {self.proc.communicate()[1]!r}")
        self.port = int(line.strip().rstrip("/").rsplit(":", 1)[1])

    def request(self, path: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})  # the path is sent as is
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def https(self, path: str, cafile: Path) -> tuple[int, dict[str, str], bytes]:
        ctx = ssl.create_default_context(cafile=str(cafile))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def raw(self, request: bytes) -> bytes:
        """A request http.client would refuse to send; the whole answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    def stop(self) -> tuple[int, str]:
        return stop_console(self.proc)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    c = Console(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _one_line(body: bytes) -> str:
    text = body.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text.strip()


def test_routes_serve_the_page_the_library_and_the_config(console: Console) -> None:
    status, h, body = console.request("/")
    assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
    assert body == (console.static / "index.html").read_bytes()
    for name, ctype in (("app.js", "text/javascript; charset=utf-8"),
                        ("app.css", "text/css; charset=utf-8"), ("logo.svg", "image/svg+xml"),
                        ("logo.png", "image/png"), ("data.json", "application/json"),
                        ("sub/mod.js", "text/javascript; charset=utf-8"),
                        ("in.js", "text/javascript; charset=utf-8")):
        status, h, body = console.request(f"/static/{name}")
        assert status == 200, name
        assert h["content-type"] == ctype and int(h["content-length"]) == len(body)
        assert body == (console.static / name).read_bytes()
    status, h, body = console.request("/static/app.js?v=2")  # a query is no other file
    assert status == 200 and body == (console.static / "app.js").read_bytes()
    status, h, body = console.request("/vendor/mqtt.esm.js")
    assert status == 200 and h["content-type"] == "text/javascript; charset=utf-8"
    assert body == console.vendor.read_bytes()
    status, h, body = console.request("/config.json")
    assert status == 200 and h["content-type"] == "application/json"
    assert json.loads(body) == {"v": 1, "broker_url": BROKER_URL, "rooms": None, "review_url": None}


def test_only_files_under_static_are_served(console: Console) -> None:
    for path in ("/static/../config.json", "/static/%2e%2e/outside.js", "/static/..%2foutside.js",
                 "/static/sub/../../outside.js", "/static/.secret.js", "/static/sub/.x.js",
                 "/static/out.js",  # a symlink leading out of static/
                 "/static/notes.py",  # not a served type
                 "/static/", "/static", "/static/sub", "/static/sub/",  # no directory listing
                 "/static//app.js", "/static/app.js/", "/static/sub\\mod.js",
                 "/index.html", "/outside.js", "/vendor/", "/vendor/mqtt.js",
                 "/node_modules/mqtt/dist/mqtt.esm.js", "/favicon.ico", "//app.js"):
        status, h, body = console.request(path)
        assert status == 404, path
        assert _one_line(body).startswith("not found"), path
        assert h["content-type"] == "text/plain; charset=utf-8"
        assert b"outside" not in body.replace(path.encode(), b"")


def test_every_response_carries_the_security_headers(console: Console) -> None:
    for path in ("/", "/static/app.js", "/vendor/mqtt.esm.js", "/config.json", "/nothing"):
        _, h, _ = console.request(path)
        assert h["content-security-policy"] == CSP, path
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer"
        assert h["server"] == "igrt-console"  # no Python version
    assert console.request("/config.json")[1]["cache-control"] == "no-store"
    assert console.request("/nothing")[1]["cache-control"] == "no-store"


def test_files_are_revalidated_on_every_load_and_answered_304_when_unchanged(
        console: Console) -> None:
    _, h, _ = console.request("/static/app.js")
    assert h["cache-control"] == "no-cache" and h["etag"] and h["last-modified"]
    status, h2, body = console.request("/static/app.js", headers={"If-None-Match": h["etag"]})
    assert status == 304 and body == b"" and h2["etag"] == h["etag"]
    assert h2["content-security-policy"] == CSP
    status, _, _ = console.request("/static/app.js",
                                   headers={"If-Modified-Since": h["last-modified"]})
    assert status == 304
    time.sleep(0.01)
    (console.static / "app.js").write_text("export const x = 2;\n")  # an update of the page
    status, h3, body = console.request("/static/app.js", headers={"If-None-Match": h["etag"]})
    assert status == 200 and body == b"export const x = 2;\n" and h3["etag"] != h["etag"]


def test_get_and_head_only(console: Console) -> None:
    status, h, body = console.request("/static/app.js", method="HEAD")
    assert status == 200 and body == b""
    assert int(h["content-length"]) == (console.static / "app.js").stat().st_size
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"):
        status, h, body = console.request("/", method=method)
        assert status == 405, method
        assert h["allow"] == "GET, HEAD" and "GET and HEAD only" in _one_line(body)


def test_a_missing_library_is_503_naming_make_setup(console: Console) -> None:
    console.vendor.unlink()
    status, h, body = console.request("/vendor/mqtt.esm.js")
    assert status == 503 and "make setup" in _one_line(body)
    assert h["content-security-policy"] == CSP


def test_one_log_line_per_request_and_none_when_quiet(tmp_path: Path) -> None:
    c = Console(tmp_path / "a")
    for path in ("/", "/nothing", "/static/app.js"):
        c.request(path)
    c.request("/", method="POST")
    c.raw(b"GET /static/\x1b[31mred HTTP/1.1\r\nHost: x\r\n\r\n")  # escapes: not in the log
    rc, err = c.stop()
    assert rc == 0
    lines = err.splitlines()
    assert len(lines) == 5, err
    assert lines[0].endswith("GET / 200") and lines[1].endswith("GET /nothing 404")
    assert "\x1b" not in err
    q = Console(tmp_path / "b", "--quiet")
    q.request("/")
    q.request("/nothing")
    rc, err = q.stop()
    assert rc == 0 and err == ""


@pytest.mark.parametrize(("text", "expect"), [
    (None, "cannot read"),
    ("{", "not a valid configuration file"),
    ("[]", "expected a JSON object"),
    ('{"broker_url": "ws://h:1", "extra": 1}', "extra: Extra inputs are not permitted"),
    ('{"broker_url": "ws://h:1", "listen": {"port": 70000}}', "listen.port"),
    ('{"broker_url": "ws://h:1", "listen": {"port": "80"}}', "listen.port"),
    ('{"broker_url": "http://h:1"}', "scheme must be ws or wss"),
    ('{"broker_url": "ws://h:1; script-src *"}', "broker_url: must be a plain"),
    ('{"broker_url": "wss://console1:pw@h:1"}', "must not carry a user name or password"),
    ('{"broker_url": "ws://h:1", "rooms": ["tr1", "tr1"]}', "listed twice"),
    ('{"broker_url": "ws://h:1", "rooms": ["tr/1"]}', "room id"),
    ('{"listen": {"port": 1}}', "broker_url: Field required"),
    ('{"broker_url": "ws://h:1", "listen": {"port": NaN}}', "NaN"),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str | None,
                                             expect: str) -> None:
    cfg = tmp_path / "console.json"
    if text is not None:
        cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "daemon.console_web", "--config", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("igrt-console: "), r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr


def test_a_port_in_use_is_one_line_and_exit_1(console: Console, tmp_path: Path) -> None:
    cfg = _config(tmp_path, listen={"host": "127.0.0.1", "port": console.port})
    r = subprocess.run([sys.executable, "-m", "daemon.console_web", "--config", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{console.port}" in r.stderr


def test_the_config_document_lists_the_configured_rooms(tmp_path: Path) -> None:
    c = Console(tmp_path, config=_config(tmp_path, rooms=["tr1", "tr2"],
                                         broker_url="wss://tr-host:9443"))
    try:
        _, h, body = c.request("/config.json")
        assert json.loads(body) == {"v": 1, "broker_url": "wss://tr-host:9443",
                                    "rooms": ["tr1", "tr2"], "review_url": None}
        assert "connect-src 'self' wss://tr-host:9443;" in h["content-security-policy"]
    finally:
        c.stop()


def test_it_imports_none_of_igrtds_code() -> None:
    probe = ("import sys, daemon.console_web.__main__; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('daemon', 'drivers', 'imaging', 'safety', 'sim'))))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                       timeout=30, check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert set(r.stdout.split()) == {"daemon", "daemon.console_web", "daemon.console_web.__main__",
                                     "daemon.console_web.bridge", "daemon.console_web.config",
                                     "daemon.console_web.server",
                                     "safety", "safety.strict_json"}


def test_a_malformed_request_is_answered_in_one_line_with_the_headers(console: Console) -> None:
    answer = console.raw(b"GET / HTTP/1.1 extra words\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert f"Content-Security-Policy: {CSP}".encode() in head
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    head, _, body = console.raw(b"GET /\r\n").partition(b"\r\n\r\n")  # HTTP/0.9: no headers
    assert head.startswith(b"HTTP/1.1 505 ") and b"Content-Security-Policy" in head


def test_with_tls_it_serves_https_and_a_failed_handshake_stops_no_one(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    cfg = _config(tmp_path, broker_url="wss://127.0.0.1:9443",
                  tls={"cert_file": str(cert), "key_file": str(key)})
    c = Console(tmp_path, config=cfg, scheme="https")
    try:
        assert c.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""  # plain HTTP: no answer
        status, h, body = c.https("/config.json", cert)
        assert status == 200 and json.loads(body)["broker_url"] == "wss://127.0.0.1:9443"
        assert "connect-src 'self' wss://127.0.0.1:9443;" in h["content-security-policy"]
        assert c.https("/", cert)[0] == 200
    finally:
        rc, err = c.stop()
    assert rc == 0 and "Traceback" not in err
    assert "connection failed" in err.splitlines()[0]  # the plain request, in one line


@pytest.mark.parametrize(("tls", "broker_url", "expect"), [
    ("good", "ws://127.0.0.1:9001", "with tls the broker_url must be wss://"),
    ("missing", "wss://127.0.0.1:9443", "tls: cannot read"),
    ("swapped", "wss://127.0.0.1:9443", "not a PEM certificate and its key"),
])
def test_a_bad_tls_config_is_one_line_and_exit_2(tmp_path: Path, tls: str, broker_url: str,
                                                 expect: str) -> None:
    cert, key = _self_signed(tmp_path)
    files = {"good": (cert, key), "missing": (tmp_path / "none.crt", key),
             "swapped": (key, cert)}[tls]
    cfg = _config(tmp_path, broker_url=broker_url,
                  tls={"cert_file": str(files[0]), "key_file": str(files[1])})
    r = subprocess.run([sys.executable, "-m", "daemon.console_web", "--config", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr


def test_sigterm_stops_it_promptly_even_with_a_request_in_progress(tmp_path: Path) -> None:
    c = Console(tmp_path)
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as slow:
        slow.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n")  # headers not finished
        time.sleep(0.2)
        t0 = time.monotonic()
        rc, err = c.stop()
    assert rc == 0 and time.monotonic() - t0 < 3.0
    assert "Traceback" not in err
