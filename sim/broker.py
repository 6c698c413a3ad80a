"""A real Mosquitto on a free loopback port, configured like production.

The simulated room (`igrt-sim`, sim/stack.py) and the tests both run it, so
it lives with the simulator; tests/support/mosquitto.py re-exports it.

    from sim.broker import running_mosquitto

    with running_mosquitto(tmp_path) as broker:
        host, port, creds = broker          # creds: {"igrtd": pw, "console1": pw, ...}
        broker.ws_url                       # "ws://127.0.0.1:<ws_port>": browser consoles
        broker.restart()                    # same ports, e.g. for reconnect tests

The config is derived from the project's systemd/mosquitto/mosquitto.conf
(its global settings: no anonymous access, packet size limit, ...) and uses
its ACL file verbatim; only the listeners, password file, persistence and
logging are replaced. There are two listeners, both on loopback and on free
ports: plain MQTT (`port`, igrtd and igrtctl) and MQTT over WebSockets
(`ws_port`, the browser console; production serves it over TLS, see
systemd/mosquitto/mosquitto.conf). `per_listener_settings false` in the
production config makes authentication and the ACL global, so both listeners
refuse anonymous clients and apply the same ACL. The system's own Mosquitto
(port 1883) is never touched.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sim.parent_death import die_with_parent, stop_child

# The broker config is the project's own (systemd/mosquitto/), read from the source
# tree: the simulator runs from a checkout or an editable install.
REPO = Path(__file__).resolve().parents[1]
PROJECT_CONF = REPO / "systemd" / "mosquitto" / "mosquitto.conf"
PROJECT_ACL = REPO / "systemd" / "mosquitto" / "acl"
DEFAULT_USERS = ("igrtd", "console1", "console2")

# Lines of the production config that the test broker replaces.
_REPLACED = ("password_file", "acl_file", "persistence", "persistence_location", "log_dest",
             "log_type", "pid_file", "user")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _global_settings() -> list[str]:
    """The production config up to its first listener, minus replaced lines."""
    out = []
    for line in PROJECT_CONF.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            break
        if words[0] not in _REPLACED:
            out.append(line.strip())
    return out


def _write_password_file(path: Path, creds: dict[str, str]) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise RuntimeError("mosquitto_passwd not found (apt-get install mosquitto)")
    first = True
    for user, password in creds.items():
        args = [tool, "-b"] + (["-c"] if first else []) + [str(path), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=10)
        first = False


class Mosquitto:
    def __init__(self, workdir: Path, users: Iterable[str] = DEFAULT_USERS) -> None:
        if not (PROJECT_CONF.is_file() and PROJECT_ACL.is_file()):
            # A wheel install has sim/ but not systemd/: say so instead of a traceback.
            raise RuntimeError(
                f"the project's broker config ({PROJECT_CONF.parent}) is missing: igrt-sim "
                "needs a checkout of igrt (make setup, or pip install -e .), not a plain install")
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(
                "mosquitto binary not found; the console API and the simulated room need a real "
                "broker "
                "(apt-get install mosquitto mosquitto-clients)"
            )
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.ws_port = free_port()
        while self.ws_port == self.port:
            self.ws_port = free_port()
        self.creds = {u: secrets.token_urlsafe(12) for u in users}
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        passwd = self.workdir / "passwd"
        _write_password_file(passwd, self.creds)
        acl = self.workdir / "acl"
        shutil.copyfile(PROJECT_ACL, acl)
        passwd.chmod(0o600)
        acl.chmod(0o600)
        lines = [
            "# generated by sim/broker.py from systemd/mosquitto/",
            *_global_settings(),
            # Running as root, Mosquitto would switch to the 'mosquitto' user
            # and then fail to read files in a private tmp dir.
            "user root",
            f"password_file {passwd}",
            f"acl_file {acl}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            f"listener {self.port} {self.host}",
            # The browser console's listener (MQTT over WebSockets). Global
            # settings (auth, ACL, limits) apply to it too: per_listener_settings false.
            f"listener {self.ws_port} {self.host}",
            "protocol websockets",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def __iter__(self) -> Iterator[object]:
        # (host, port, creds): the plain MQTT listener, as callers have always unpacked it.
        return iter((self.host, self.port, self.creds))

    @property
    def ws_url(self) -> str:
        """The WebSockets listener as a browser's MQTT client names it."""
        return f"ws://{self.host}:{self.ws_port}"

    def start(self, timeout_s: float = 10.0) -> None:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                # SIGTERM when the simulator or test dies, SIGKILL included: no orphan broker.
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl, see sim/parent_death.py
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            if all(_listening(self.host, p) for p in (self.port, self.ws_port)):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} and {self.ws_port} "
                           f"within {timeout_s} s")

    def stop(self) -> None:
        """Kill (not a clean shutdown: the test wants a broker that just vanishes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 5.0) -> None:
        """A clean shutdown (SIGTERM), killed if it does not exit within `timeout_s`:
        for a simulated room going down, where nothing should be left running."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_child(proc, timeout_s)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@contextmanager
def running_mosquitto(
    tmp_path: Path, users: Iterable[str] = DEFAULT_USERS
) -> Iterator[Mosquitto]:
    broker = Mosquitto(Path(tmp_path) / "mosquitto", users)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
