"""One error model (issue 12, item 5): every way a command ends is an answer
with a code from `ErrorCode`, the same on both front ends; igrtctl turns it
into one exit code of `ExitCode`, never "unreachable" for a daemon fault."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.api import Actor, CommandError, Role
from daemon.commands import execute
from daemon.config import RoomConfig
from daemon.console.client import ConsoleClient
from daemon.console.tokens import MemoryReplayCache
from daemon.control import ControlClient, ControlServer
from daemon.errors import ErrorCode
from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.main import main as igrtctl
from daemon.workflow import TransitionRefused
from drivers.couch import CouchTimeout

ALICE = Actor(user="alice", role=Role.THERAPIST, via="test")
BOB = Actor(user="bob", role=Role.APPROVER, via="test")
VIEWER = Actor(user="vic", role=Role.VIEWER, via="test")


class _Service:
    """RoomCommands methods that end in the ways under test."""

    def __init__(self) -> None:
        self.audited: list[tuple[str, str, dict[str, Any]]] = []
        self.calls: list[str] = []

    def audit(self, event: str, actor: str, **details: Any) -> None:
        self.audited.append((event, actor, details))

    async def status(self, actor: Actor) -> dict[str, Any]:
        return {"state": "READY"}

    async def reset(self, actor: Actor) -> dict[str, Any]:
        self.calls.append("reset")
        raise CouchTimeout("no reply to STATUS within 0.2 s")

    async def close_session(self, actor: Actor) -> dict[str, Any]:
        raise TransitionRefused("state MOVING cannot go to STANDBY (session closed)")

    async def approve(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self.calls.append("approve")
        raise CommandError("second approval must come from another user", "refused")

    async def confirm(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self.calls.append("confirm")
        return {"status": "confirmed"}


class _Recorder:
    def __init__(self) -> None:
        self.audited: list[tuple[str, str, dict[str, Any]]] = []
        self.faults: list[BaseException] = []

    def audit(self, event: str, actor: str, details: dict[str, Any]) -> None:
        self.audited.append((event, actor, details))

    def fault(self, exc: BaseException) -> None:
        self.faults.append(exc)


def _run(service: _Service, actor: Actor, cmd: str, args: dict[str, Any],
         rec: _Recorder) -> Any:
    return asyncio.run(execute(service, actor, cmd, args,  # type: ignore[arg-type]
                               audit=rec.audit, on_fault=rec.fault))


def test_an_unexpected_exception_in_a_handler_is_answered_internal_and_reported() -> None:
    rec = _Recorder()
    answer = _run(_Service(), ALICE, "reset", {}, rec)
    assert not answer.ok and answer.code is ErrorCode.INTERNAL
    assert "CouchTimeout" in answer.reason and "\n" not in answer.reason
    assert [type(e) for e in rec.faults] == [CouchTimeout]


def test_a_refused_state_transition_is_an_audited_refusal() -> None:
    rec = _Recorder()
    answer = _run(_Service(), ALICE, "close_session", {}, rec)
    assert not answer.ok and answer.code is ErrorCode.REFUSED
    assert "cannot go to STANDBY" in answer.reason
    assert [(e, d["command"]) for e, _a, d in rec.audited] == [("reject", "close_session")]
    assert rec.faults == []


def test_a_command_error_is_answered_with_its_own_code() -> None:
    answer = _run(_Service(), BOB, "approve", {"proposal_id": "p1"}, _Recorder())
    assert (answer.code, answer.reason) == (ErrorCode.REFUSED,
                                            "second approval must come from another user")


def test_a_command_error_code_outside_the_enum_cannot_be_raised() -> None:
    with pytest.raises(ValueError):
        CommandError("no", "same_user")


def test_a_role_not_allowed_is_refused_and_audited_before_the_service_is_called() -> None:
    service, rec = _Service(), _Recorder()
    answer = _run(service, VIEWER, "confirm", {"proposal_id": "p1"}, rec)
    assert answer.code is ErrorCode.FORBIDDEN and service.calls == []
    assert [e for e, _a, _d in rec.audited] == ["reject"]


def test_arguments_that_do_not_fit_are_bad_args_before_the_service_is_called() -> None:
    service = _Service()
    answer = _run(service, ALICE, "confirm", {"proposal_id": "p1", "force": True}, _Recorder())
    assert answer.code is ErrorCode.BAD_ARGS and service.calls == []


def test_an_unknown_command_is_a_bad_request() -> None:
    answer = _run(_Service(), ALICE, "launch", {}, _Recorder())
    assert answer.code is ErrorCode.BAD_REQUEST


# --- the local socket and igrtctl -------------------------------------------------


@pytest.fixture
def local_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, _Service]]:
    """A ControlServer over _Service in a thread; alice is this OS account."""
    monkeypatch.delenv("IGRT_KEY_DIR", raising=False)
    monkeypatch.delenv("IGRT_KEY", raising=False)
    config = RoomConfig.model_validate({
        "room": "r1", "state_dir": str(tmp_path), "couch": {"port": "/dev/null"},
        "users": [{"name": "alice", "role": "therapist", "local_uid": os.getuid()}]})
    service = _Service()
    loop = asyncio.new_event_loop()
    server = ControlServer(service, config, replay_cache=MemoryReplayCache())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield config.control_socket, service
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_couch_timeout_on_the_local_socket_is_answered_internal_and_the_line_goes_on(
    local_room: tuple[Path, _Service],
) -> None:
    path, service = local_room
    with ControlClient(path, "alice", key=None) as c:
        reply = c.call("reset")
        assert not reply["ok"] and reply["code"] == "internal", reply
        assert c.call("status") == {"ok": True, "result": {"state": "READY"}}
    assert [e for e, _a, _d in service.audited] == ["internal_error"]


def test_igrtctl_reports_a_daemon_fault_as_refused_in_one_line_not_unreachable(
    local_room: tuple[Path, _Service], capsys: pytest.CaptureFixture[str],
) -> None:
    path, _service = local_room
    code = igrtctl(["--socket", str(path), "--user", "alice", "reset"])
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED
    assert err.count("\n") == 1 and "(internal)" in err and "Traceback" not in err


def test_igrtctl_without_a_daemon_is_unreachable(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = igrtctl(["--socket", str(tmp_path / "none.sock"), "--user", "alice", "status"])
    assert code == ExitCode.UNREACHABLE and capsys.readouterr().err.count("\n") == 1


def test_both_clients_offer_the_same_call() -> None:
    local = inspect.signature(ControlClient.call)
    mqtt = inspect.signature(ConsoleClient.call)
    assert list(local.parameters) == list(mqtt.parameters) == ["self", "cmd", "args"]


def test_a_stop_with_arguments_it_cannot_read_still_stops_and_the_arguments_are_audited() -> None:
    class _Stoppable(_Service):
        async def stop(self, actor: Actor, reason: str) -> dict[str, Any]:
            self.calls.append(f"stop:{reason}")
            return {"state": "STOPPED"}

    service, rec = _Stoppable(), _Recorder()
    answer = _run(service, ALICE, "stop", {"reason": "x" * 1000, "now": True}, rec)
    assert answer.ok and service.calls == ["stop:"]
    assert [(e, d["command"]) for e, _a, d in rec.audited] == [("reject", "stop")]
