"""Who is who on the local socket: a name counts only with a proof (issue 11, item 8).

igrtd runs as a real process; consoles are real processes or real sockets. A
second approval must come from a second authenticated person: a different OS
account (peer credentials mapped by `local_uid`) or a different Ed25519 key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.audit import read_records
from daemon.console.keys import generate_keypair
from daemon.control import ControlClient
from safety.pose import Pose
from sim.room import DEMO_USERS, DaemonProcess, SimRoom

from .conftest import Console, executed

LARGE = Pose(6.0, 4.0, -3.0, 1.5, 1.0, -0.8)  # vector shift 7.8 mm: second approval
OTHER_UID = 65534  # "nobody": a second OS account on any Linux test host

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="switching OS accounts needs root")


def _raw(sock_path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One plain request on a fresh connection, no key: only the peer's uid speaks for it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def as_os_account(uid: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn` in a forked child that has become OS account `uid` (a real second process)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to the other account, talk to igrtd, report through the pipe
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = json.dumps(fn()).encode()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised here
            out = json.dumps({"child_error": repr(exc)}).encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    assert "child_error" not in reply, reply
    return reply


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A socket directory the other OS account can reach (the igrt group, in production)."""
    d = Path(tempfile.mkdtemp(prefix="igrt-local-id-"))
    os.chmod(d, 0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def _users(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for u in DEMO_USERS:
        entry = {k: v for k, v in u.items() if k not in ("public_key", "local_uid")}
        entry.update(changes.get(u["name"], {}))
        out.append(entry)
    return out


def _start(room: SimRoom, tmp_path: Path, users: list[dict[str, Any]],
           socket_dir: Path | None = None) -> DaemonProcess:
    state = tmp_path / "state"
    overrides: dict[str, Any] = {"users": users}
    if socket_dir is not None:
        overrides["socket_path"] = str(socket_dir / "igrtd.sock")
    d = DaemonProcess(room.room_config(state, **overrides), state, tmp_path / "igrtd.log").start()
    if socket_dir is not None:
        os.chown(d.socket_path, 0, OTHER_UID)  # the other account is in the socket's group
    return d


def _awaiting_approval(alice: Console) -> str:
    alice.open_session()
    prop = alice.propose(LARGE)
    assert prop["ok"] and prop["result"]["verdict"] == "needs_second_approval", prop
    pid: str = prop["result"]["id"]
    assert alice.ok("confirm", proposal_id=pid)["status"] == "awaiting_approval"
    return pid


def _rejects(d: DaemonProcess) -> list[Any]:
    return list(read_records(d.state_dir / "audit", event="reject"))


def test_one_os_account_cannot_confirm_as_alice_and_approve_as_bob(room, daemon) -> None:
    alice = Console(daemon.socket_path, "alice")  # this OS account is alice (local_uid)
    pid = _awaiting_approval(alice)
    reply = _raw(daemon.socket_path, {"cmd": "approve", "user": "bob",
                                      "args": {"proposal_id": pid}})
    assert not reply["ok"] and reply["code"] == "forbidden", reply
    assert "authenticated as 'alice'" in reply["error"] and "'bob'" in reply["error"]
    assert alice.ok("status")["state"] == "AWAITING_APPROVAL"
    rec = [r for r in _rejects(daemon) if r.details.get("command") == "approve"]
    assert rec and rec[-1].actor == "alice" and rec[-1].details["claimed_user"] == "bob"
    assert executed(room, "GO") == []


def test_an_unsigned_request_from_an_unmapped_account_is_unauthenticated(room, tmp_path) -> None:
    d = _start(room, tmp_path, _users())  # nobody has a local_uid or a key
    try:
        reply = _raw(d.socket_path, {"cmd": "open_session", "user": "alice", "args": {
            "patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F",
            "iso": [0, 0, 0], "patient_position": "HFS",
            "manual_override": "typed for the test room"}})
        assert not reply["ok"] and reply["code"] == "unauthenticated", reply
        assert "--key" in reply["error"] and "local_uid" in reply["error"]
        assert _raw(d.socket_path, {"cmd": "status", "user": "alice"})["result"]["state"] != "READY"
    finally:
        d.stop()


@needs_root
def test_two_os_accounts_confirm_and_approve_and_the_couch_moves(room, tmp_path,
                                                                 shared_dir) -> None:
    users = _users(alice={"local_uid": os.getuid()}, bob={"local_uid": OTHER_UID})
    d = _start(room, tmp_path, users, shared_dir)
    try:
        alice = Console(d.socket_path, "alice", key=None)
        pid = _awaiting_approval(alice)
        sock = d.socket_path
        approval = as_os_account(OTHER_UID, lambda: _raw(sock, {
            "cmd": "approve", "user": "bob", "args": {"proposal_id": pid}}))
        assert approval["ok"], approval
        assert alice.ok("status")["state"] == "CONFIRMED"
        holder = alice.hold_in_background(pid)
        try:
            alice.wait_state("DONE", "FAULT", "STOPPED")
        finally:
            holder.stop()
        assert alice.ok("status")["state"] == "DONE"
        rec = list(read_records(d.state_dir / "audit", event="approval"))[-1]
        assert rec.actor == "bob" and rec.details["via"] == f"local:uid={OTHER_UID} (bob)"
    finally:
        d.stop()


@needs_root
def test_the_other_account_cannot_claim_alice_either(room, tmp_path, shared_dir) -> None:
    users = _users(alice={"local_uid": os.getuid()}, bob={"local_uid": OTHER_UID})
    d = _start(room, tmp_path, users, shared_dir)
    try:
        sock = d.socket_path
        reply = as_os_account(OTHER_UID, lambda: _raw(sock, {
            "cmd": "open_session", "user": "alice", "args": {
                "patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F",
                "iso": [0, 0, 0], "patient_position": "HFS",
                "manual_override": "typed for the test room"}}))
        assert not reply["ok"] and reply["code"] == "forbidden", reply
        assert f"uid={OTHER_UID} (bob)" in reply["error"]
    finally:
        d.stop()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for u in ("alice", "bob"):
        generate_keypair(tmp_path / f"{u}.key", tmp_path / f"{u}.pub.jwk")
        out[u] = tmp_path / f"{u}.key"
    return out


def _with_keys(keys: dict[str, Path]) -> list[dict[str, Any]]:
    return _users(**{u: {"public_key": json.loads(p.with_suffix(".pub.jwk").read_text())}
                     for u, p in keys.items()})


def test_two_signing_keys_confirm_and_approve_and_the_couch_moves(room, tmp_path, keys) -> None:
    d = _start(room, tmp_path, _with_keys(keys))  # no local_uid at all: keys are the only proof
    try:
        alice = Console(d.socket_path, "alice", key=keys["alice"])
        pid = _awaiting_approval(alice)
        with ControlClient(d.socket_path, "bob", key=keys["bob"]) as bob:
            assert bob.call("approve", proposal_id=pid)["ok"]
        holder = alice.hold_in_background(pid)
        try:
            alice.wait_state("DONE", "FAULT", "STOPPED")
        finally:
            holder.stop()
        assert alice.ok("status")["state"] == "DONE"
        rec = list(read_records(d.state_dir / "audit", event="approval"))[-1]
        assert rec.actor == "bob" and rec.details["via"].startswith("local:key")
    finally:
        d.stop()


def test_alices_key_cannot_sign_bobs_approval(room, tmp_path, keys) -> None:
    d = _start(room, tmp_path, _with_keys(keys))
    try:
        alice = Console(d.socket_path, "alice", key=keys["alice"])
        pid = _awaiting_approval(alice)
        with ControlClient(d.socket_path, "bob", key=keys["alice"]) as forger:
            reply = forger.call("approve", proposal_id=pid)
        assert not reply["ok"] and reply["code"] == "bad_signature", reply
        assert alice.ok("status")["state"] == "AWAITING_APPROVAL"
        assert any(r.details.get("code") == "bad_signature" for r in _rejects(d))
    finally:
        d.stop()


def test_a_signed_local_request_is_used_once(room, tmp_path, keys) -> None:
    from daemon.console.keys import load_private_key
    from daemon.console.tokens import sign_command

    d = _start(room, tmp_path, _with_keys(keys))
    try:
        token = sign_command(load_private_key(keys["alice"]), cmd="stop", sub="alice", aud="demo",
                             reply_to="local", args={"reason": "test"})
        assert _raw(d.socket_path, {"jws": token})["ok"]
        again = _raw(d.socket_path, {"jws": token})
        assert not again["ok"] and again["code"] == "replayed", again
    finally:
        d.stop()


def test_a_signed_local_request_names_its_token_id_in_the_audit_log(room, tmp_path,
                                                                    keys) -> None:
    # Start-up remembers it again from there if a power loss took it from the state
    # store's replay cache (daemon/claim_recovery.py).
    from daemon.console.keys import load_private_key
    from daemon.console.tokens import sign_command

    d = _start(room, tmp_path, _with_keys(keys))
    try:
        token = sign_command(load_private_key(keys["alice"]), cmd="stop", sub="alice", aud="demo",
                             reply_to="local", args={"reason": "test"}, jti="token-of-alice")
        assert _raw(d.socket_path, {"jws": token})["ok"]
    finally:
        d.stop()
    verified = list(read_records(d.state_dir / "audit", event="console.command_verified"))
    assert [(r.actor, r.details["cmd"], r.details["jti"]) for r in verified] == [
        ("alice", "stop", "token-of-alice")]


def test_read_only_commands_and_stop_take_a_claimed_name_and_audit_the_proven_one(
        room, daemon) -> None:
    # This account is alice; it claims vic and bob without a key.
    assert _raw(daemon.socket_path, {"cmd": "status", "user": "vic"})["ok"]
    reply = _raw(daemon.socket_path, {"cmd": "stop", "user": "bob", "args": {"reason": "claim"}})
    assert reply["ok"], reply
    stop = list(read_records(daemon.state_dir / "audit", event="stop"))[-1]
    assert stop.actor == "bob"
    assert stop.details["via"] == f"local:claimed bob by uid={os.getuid()} (alice)"


def _igrtctl(d: DaemonProcess, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.igrtctl", "--socket", str(d.socket_path),
                           *args], check=False, capture_output=True, text=True, env=env,
                          timeout=60)


def test_igrtctl_approves_with_key_on_the_local_socket_and_not_without(room, tmp_path,
                                                                      keys) -> None:
    d = _start(room, tmp_path, _with_keys(keys))
    try:
        pid = _awaiting_approval(Console(d.socket_path, "alice", key=keys["alice"]))
        env = {k: v for k, v in os.environ.items() if k not in ("IGRT_KEY", "IGRT_KEY_DIR")}
        unsigned = _igrtctl(d, "--user", "bob", "approve", pid, env=env)
        assert unsigned.returncode == 1
        assert unsigned.stderr.count("\n") == 1 and "needs proof" in unsigned.stderr
        signed = _igrtctl(d, "--user", "bob", "--key", str(keys["bob"]), "approve", pid, env=env)
        assert signed.returncode == 0, signed.stderr
        who = _igrtctl(d, "--user", "bob", "--json", "whoami", env=env)
        assert json.loads(who.stdout)["room"] == "demo"
    finally:
        d.stop()


def test_igrtctl_with_an_unreadable_key_is_a_one_line_error(room, daemon, tmp_path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text('{"kty": "OKP", "crv": "Ed25519", "x": NaN}')
    out = _igrtctl(daemon, "--user", "bob", "--key", str(bad), "approve", "p1",
                   env=dict(os.environ))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr


def _check_config(tmp_path: Path, users: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "room.json"
    p.write_text(json.dumps({"couch": {"port": "/dev/ttyUSB0"}, "users": users}))
    return subprocess.run([sys.executable, "-m", "daemon.main", "--check-config", str(p)],
                          check=False, capture_output=True, text=True, timeout=60)


def test_check_config_refuses_one_os_account_for_two_users(tmp_path) -> None:
    out = _check_config(tmp_path, [{"name": "alice", "role": "therapist", "local_uid": 1001},
                                   {"name": "bob", "role": "approver", "local_uid": 1001}])
    assert out.returncode == 2 and "local_uid 1001 is given to two users" in out.stderr


@pytest.mark.parametrize("uid", [-1, True, "1001", 1.5])
def test_check_config_refuses_a_local_uid_that_is_not_a_uid(tmp_path, uid: Any) -> None:
    out = _check_config(tmp_path, [{"name": "alice", "role": "therapist", "local_uid": uid}])
    assert out.returncode == 2 and "local_uid" in out.stderr, out.stderr
