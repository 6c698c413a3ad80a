"""A reply igrtctl cannot read is one line and exit UNREACHABLE, never a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.main import main


@pytest.fixture
def answering(tmp_path: Path) -> Iterator[tuple[Path, list[bytes], list[bytes]]]:
    """A local socket that answers each request line with the next canned line."""
    path = tmp_path / "igrtd.sock"
    lines: list[bytes] = []
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            for line in lines:
                request = f.readline()
                if not request:
                    return
                received.append(request)
                f.write(line)
                f.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, lines, received
    server.close()
    thread.join(timeout=5)


@pytest.mark.parametrize("line, says", [
    (b"not json\n", "malformed reply"),
    (b'{"ok": true}\n', "result: expected an object, got null"),
    (b'[1, 2]\n', "reply: expected an object, got list"),
    (b'{"ok": true, "result": {"remaining": 1}}\n', None),  # status prints what it got
])
def test_malformed_reply_is_one_line(answering: tuple[Path, list[bytes], list[bytes]], line: bytes,
                                     says: str | None, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path, lines, _ = answering
    lines.append(line)
    monkeypatch.delenv("IGRT_KEY", raising=False)
    monkeypatch.delenv("IGRT_KEY_DIR", raising=False)
    code = main(["--socket", str(path), "--user", "alice", "status"])
    err = capsys.readouterr().err
    if says is None:
        assert code == ExitCode.OK
        return
    assert code == ExitCode.UNREACHABLE
    assert says in err and "status" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_malformed_reply_during_hold_to_run_still_releases(
        answering: tuple[Path, list[bytes], list[bytes]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path, lines, received = answering
    lines += [b'{"ok": true, "result": {"state": "MOVING"}}\n', b"garbage\n",
              b'{"ok": true, "result": {}}\n']
    monkeypatch.delenv("IGRT_KEY", raising=False)
    monkeypatch.delenv("IGRT_KEY_DIR", raising=False)
    code = main(["--socket", str(path), "--user", "alice", "hold", "p-1"])
    assert code == ExitCode.UNREACHABLE
    assert "Traceback" not in capsys.readouterr().err
    assert b'"release"' in received[-1]
