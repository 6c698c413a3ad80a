"""The recorder never blocks and is off by default; bad recordings are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_config
from daemon.recording import FORMAT, SessionRecorder
from sim.replay_load import RecordingError, load_recording

HEADER = b'{"format":"igrt-recording/1","room":"r","config":{},"users":[]}\n'
BASE = {"couch": {"port": "/dev/x"}, "users": [{"name": "a", "role": "therapist"}]}


def test_recording_is_off_by_default_and_bad_sections_are_refused() -> None:
    assert parse_config(json.dumps(BASE)).record is None
    for bad in ({"path": "/tmp/x", "max_mb": 0}, {"path": "/tmp/x", "extra": 1}, {},
                {"path": "/tmp/x", "max_mb": "5"}, {"path": " "}):
        with pytest.raises(ConfigError) as exc:
            parse_config(json.dumps({**BASE, "record": bad}))
        assert all("\n" not in p and p.startswith("record") for p in exc.value.problems)


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    r = SessionRecorder(tmp_path / "r.jsonl", 10_000_000, {"format": FORMAT}, queue_records=10)
    for _ in range(100):  # no writer thread yet: the queue fills, nothing waits
        r.couch_frame("tx", bytes.fromhex("a55a0003056ac9"))
    assert r.dropped == 90
    r.open()
    r.close()
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert any(x.get("kind") == "dropped" and x["total"] >= 90 for x in lines)


def test_size_cap_stops_recording_with_a_record(tmp_path: Path) -> None:
    r = SessionRecorder(tmp_path / "r.jsonl", 2_000, {"format": FORMAT})
    r.open()
    for _ in range(200):
        r.couch_frame("tx", bytes.fromhex("a55a0003056ac9"))
    r.close()
    text = (tmp_path / "r.jsonl").read_text()
    assert len(text) <= 2_000 and '"kind":"stopped"' in text


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b'{"format":"other"}\n', "not an igrt recording"),
    (HEADER + b'{"kind":"couch","t":NaN,"dir":"tx","hex":"a55a0003056ac9"}\n', "line 2"),
    (HEADER + b'{"kind":"couch","t":1,"dir":"tx","hex":"a55a0003056ac8"}\n', "good CRC"),
    (b"not json\n", "line 1"),
])
def test_malformed_recordings_are_one_line_errors(tmp_path: Path, content: bytes,
                                                  words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordingError) as exc:
        load_recording(path)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_huge_recording_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b"x" * 2000)
    with pytest.raises(RecordingError, match="larger than the limit"):
        load_recording(path, max_bytes=1000)
