"""Process-level fuzzing: fuzzed lines on a real igrtd's local socket and fuzzed
payloads on a real Mosquitto's `igrt/<room>/cmd` topic. However hostile the
input, igrtd is still running afterwards and answers `status`; a hostile
command left retained on the broker does not stop igrtd from starting.

igrtd runs as a child process beside the simulated room (couch on a pty),
started once per module: the inputs vary, the daemon does not restart.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from support.mosquitto import Mosquitto, running_mosquitto

from daemon.control import ControlClient
from sim.room import DaemonProcess, SimRoom

from . import strategies as s
from .harness import fuzz_settings
from .jsontext import deep_array_doc
from .targets import check_reply_line, corpus_files


def _daemon_answers_status(d: DaemonProcess) -> None:
    assert d.proc is not None and d.proc.poll() is None, (
        f"igrtd exited with {d.proc.returncode if d.proc else None}; tail of its log:\n"
        + _log_tail(d))
    with ControlClient(d.socket_path, "alice", timeout_s=10) as c:
        reply = c.call("status")
    assert reply.get("ok") is True, reply


def _log_tail(d: DaemonProcess, n: int = 25) -> str:
    try:
        return "\n".join(d.log_path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _send_line(path: Path, line: bytes, timeout: float = 10.0) -> bytes | None:
    """One request line on a new connection; the reply line, or None if igrtd hung up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(line.rstrip(b"\n") + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (BrokenPipeError, ConnectionResetError):
            return None
    # A binary "line" may hold a newline byte (UTF-16): then the first reply is its first part's.
    return buf.split(b"\n", 1)[0] + b"\n" if buf else None


# ----------------------------------------------------------------- local socket


@pytest.fixture(scope="module")
def local_igrtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("fuzz-local")
    with SimRoom() as room:
        d = DaemonProcess(room.room_config(tmp / "state"), tmp / "state", tmp / "igrtd.log")
        d.start()
        try:
            yield d
        finally:
            d.stop()


@fuzz_settings(0.3, cap=300)
@given(line=s.local_request_lines())
def test_fuzzed_local_line_gets_one_wellformed_reply_from_real_igrtd(
    local_igrtd: DaemonProcess, line: bytes
) -> None:
    reply = _send_line(local_igrtd.socket_path, line)
    check_reply_line(reply, "igrtd control socket")
    assert local_igrtd.proc is not None and local_igrtd.proc.poll() is None, _log_tail(local_igrtd)


def test_real_igrtd_answers_status_after_the_local_corpus(local_igrtd: DaemonProcess) -> None:
    bad_replies: list[str] = []
    for path in corpus_files("local_line"):
        reply = _send_line(local_igrtd.socket_path, path.read_bytes())
        try:
            check_reply_line(reply, f"igrtd control socket ({path.name})")
        except AssertionError as exc:  # reported after the survival check below
            bad_replies.append(str(exc))
    _daemon_answers_status(local_igrtd)
    assert not bad_replies, bad_replies


# ------------------------------------------------------------------------- MQTT

ROOM = "demo"
CMD_TOPIC = f"igrt/{ROOM}/cmd"


class MqttRig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.room = SimRoom().start()
        self._broker_cm = running_mosquitto(tmp / "broker")
        self.broker: Mosquitto = self._broker_cm.__enter__()
        pw = tmp / "igrtd.mqtt.pw"
        pw.write_text(self.broker.creds["igrtd"])
        cfg = self.room.room_config(
            tmp / "state", mqtt={"host": self.broker.host, "port": self.broker.port,
                                 "username": "igrtd", "password_file": str(pw)})
        self.daemon = DaemonProcess(cfg, tmp / "state", tmp / "igrtd.log")

    def publish(self, payloads: list[bytes], retain: bool = False,
                timeout_s: float = 5.0) -> None:
        """Publish as a console account, in bounded time: the broker drops a client
        whose message it refuses (over its size limit), and paho's
        `publish.multiple` would then reconnect and resend forever. A message the
        broker did not take never reaches igrtd; the survival check that follows
        is the same."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.username_pw_set("console1", self.broker.creds["console1"])
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            for p in payloads:
                info = client.publish(CMD_TOPIC, p, qos=1, retain=retain)
                try:
                    info.wait_for_publish(timeout_s)
                except (RuntimeError, ValueError):
                    return  # dropped by the broker
                if not info.is_published():
                    return
        finally:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        try:
            self.daemon.stop()
        finally:
            self._broker_cm.__exit__(None, None, None)
            self.room.stop()


@pytest.fixture(scope="module")
def mqtt_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttRig]:
    rig = MqttRig(tmp_path_factory.mktemp("fuzz-mqtt"))
    try:
        rig.daemon.start()
        _wait_for_mqtt_link(rig)
        yield rig
    finally:
        rig.close()


def _wait_for_mqtt_link(rig: MqttRig, timeout: float = 15.0) -> None:
    """Until igrtd has subscribed to the command topic: it then says `online` (retained)
    on igrt/<room>/status, so a fuzzed publish is not lost before anyone listens."""
    online = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        try:
            if json.loads(msg.payload).get("status") == "online":
                online.set()
        except ValueError:
            pass

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set("console2", rig.broker.creds["console2"])
    client.on_message = on_message
    client.connect(rig.broker.host, rig.broker.port)
    client.subscribe(f"igrt/{ROOM}/status", qos=1)
    client.loop_start()
    try:
        assert online.wait(timeout), f"igrtd never came online on MQTT:\n{_log_tail(rig.daemon)}"
    finally:
        client.loop_stop()
        client.disconnect()


def _settle(seconds: float = 0.5) -> None:
    # igrtd died about 100 ms after the killing publish (issue 11): give it time to.
    time.sleep(seconds)


@fuzz_settings(0.3, cap=300)
@given(payloads=s.mqtt_payloads().map(lambda p: [p]))
def test_fuzzed_command_payload_leaves_real_igrtd_running(
    mqtt_rig: MqttRig, payloads: list[bytes]
) -> None:
    mqtt_rig.publish(payloads)
    _settle(0.2)
    assert mqtt_rig.daemon.proc is not None and mqtt_rig.daemon.proc.poll() is None, (
        _log_tail(mqtt_rig.daemon))


def test_real_igrtd_answers_status_after_the_mqtt_corpus(mqtt_rig: MqttRig) -> None:
    mqtt_rig.publish([p.read_bytes() for p in corpus_files("mqtt_command")])
    _settle()
    _daemon_answers_status(mqtt_rig.daemon)


def test_real_igrtd_starts_and_answers_status_with_a_deep_command_retained(
    mqtt_rig: MqttRig,
) -> None:
    mqtt_rig.publish([deep_array_doc(5000).encode()], retain=True)
    _settle()
    _daemon_answers_status(mqtt_rig.daemon)
    mqtt_rig.daemon.stop()
    mqtt_rig.daemon.start()  # a crash loop would end here: igrtd exits during start
    _wait_for_mqtt_link(mqtt_rig)
    _settle()
    _daemon_answers_status(mqtt_rig.daemon)
