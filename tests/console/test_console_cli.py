"""igrtctl console commands, run as a real process against a real broker."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from daemon.igrtctl.main import main as run_console

from .conftest import ROOM, ConsoleHarness, Identities

RUN = "import sys; from daemon.igrtctl.main import main as run_console; sys.exit(run_console(sys.argv[1:]))"


async def igrtctl(*args: str, sigint_after_holds: tuple[ConsoleHarness, int] | None = None
                  ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    if sigint_after_holds is not None:
        harness, n = sigint_after_holds
        async with asyncio.timeout(20):
            while harness.room.names().count("hold") < n:
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def broker_args(broker, ids: Identities, user: str = "alice") -> list[str]:
    return ["--broker", f"mqtt://console1:{broker.creds['console1']}@{broker.host}:{broker.port}",
            "--user", user, "--key", str(ids.key_paths[user]), "--room", ROOM]


async def test_status_over_the_broker_prints_the_result(served, broker, identities) -> None:
    rc, out, err = await igrtctl(*broker_args(broker, identities), "--json", "status")
    assert rc == 0, err
    assert json.loads(out)["actor"] == "alice"


async def test_refused_command_is_one_line_and_exit_1(served, broker, identities) -> None:
    rc, _out, err = await igrtctl(*broker_args(broker, identities, "vera"), "stop")
    assert rc == 1
    assert err.count("\n") == 1 and "role viewer may not stop" in err
    assert "Traceback" not in err
    assert served.room.calls == []


async def test_unreachable_broker_is_one_line_and_exit_4(identities, tmp_path: Path) -> None:
    from support.mosquitto import free_port

    rc, _out, err = await igrtctl("--broker", f"mqtt://console1:x@127.0.0.1:{free_port()}",
                                  "--user", "alice", "--key", str(identities.key_paths["alice"]),
                                  "status")
    assert rc == 4 and err.count("\n") == 1 and "Traceback" not in err


async def test_interactive_hold_shows_progress_and_releases_on_ctrl_c(
    served: ConsoleHarness, broker, identities
) -> None:
    rc, out, err = await igrtctl(*broker_args(broker, identities), "hold", "p1",
                                 sigint_after_holds=(served, 5))
    assert rc == 1, err
    assert "MOVING" in out and "released" in out
    assert "Traceback" not in err
    async with asyncio.timeout(5):
        while served.room.names()[-1] != "release":
            await asyncio.sleep(0.02)


async def test_hold_runs_until_the_move_is_done(served: ConsoleHarness, broker, identities) -> None:
    served.room.holds_until_done = 5
    rc, out, err = await igrtctl(*broker_args(broker, identities), "hold", "p1")
    assert rc == 0, err
    assert "done: arrived" in out


def test_keygen_and_users_add_list(tmp_path: Path, capsys) -> None:
    prefix = tmp_path / "carol"
    assert run_console(["keygen", "--out", str(prefix)]) == 0
    reg = tmp_path / "users.json"
    assert run_console(["users", "add", "--registry", str(reg), "--user", "carol",
                        "--role", "approver", "--public-key", f"{prefix}.pub.jwk"]) == 0
    capsys.readouterr()
    assert run_console(["users", "list", "--registry", str(reg)]) == 0
    assert "carol" in capsys.readouterr().out


def test_users_add_with_a_private_key_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    prefix = tmp_path / "carol"
    run_console(["keygen", "--out", str(prefix)])
    rc = run_console(["users", "add", "--registry", str(tmp_path / "u.json"), "--user", "carol",
                      "--role", "therapist", "--public-key", f"{prefix}.key"])
    err = capsys.readouterr().err
    assert rc == 2 and "PRIVATE" in err and err.count("\n") == 1


def test_missing_key_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    rc = run_console(["--broker", "mqtt://c:p@127.0.0.1:1", "--user", "a",
                      "--key", str(tmp_path / "nope.key"), "status"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read key" in err and err.count("\n") == 1


def test_usage_error_is_one_line(capsys) -> None:
    assert run_console(["--broker", "mqtt://h", "frobnicate"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
