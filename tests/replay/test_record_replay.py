"""Record a short fraction with a door opening mid-move, replay it against a
fresh igrtd (docs/record-replay.md): it reproduces; a tampered recording diverges."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.replay import replay
from sim.replay_load import load_recording
from sim.room import DaemonProcess, SimRoom
from tests.room.conftest import Console

pytestmark = pytest.mark.timeout(90)


def _fraction_with_door_fault(tmp_path: Path) -> Path:
    """alice opens a session, proposes a shift, confirms, bob approves, alice holds; the door opens."""
    path = tmp_path / "field.jsonl"
    with SimRoom(with_plc=True, couch_kwargs={"seed": 7}) as room:
        cfg = room.room_config(tmp_path / "state", record={"path": str(path)})
        d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
        try:
            alice = Console(d.socket_path, "alice")
            alice.open_session()
            from safety.pose import Pose

            prop = alice.propose(Pose(4.0, 3.0, -2.0, 0.0, 0.0, 0.0))
            assert prop["ok"], prop
            pid = prop["result"]["id"]
            alice.ok("confirm", proposal_id=pid)
            bob = Console(d.socket_path, "bob")
            bob.ok("approve", proposal_id=pid)  # a 5 mm shift needs a second person
            bob.c.close()
            room.call(lambda: room.plc.press_motion_enable())
            holder = alice.hold_in_background(pid)
            alice.wait_state("MOVING")
            time.sleep(0.3)
            room.call(lambda: room.plc.open_door())
            alice.wait_state("FAULT", "STOPPED")
            time.sleep(0.3)
            holder.stop()
            alice.c.close()
        finally:
            d.stop()
    return path


@pytest.fixture(scope="module")
def field_recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield _fraction_with_door_fault(tmp_path_factory.mktemp("field"))


def test_recording_has_frames_blocks_commands_and_states(field_recording: Path) -> None:
    r = load_recording(field_recording)
    assert r.header["format"] == "igrt-recording/1"
    kinds = [f.kind for f in r.decisive_tx()]
    assert "TARGET" in kinds and "GO" in kinds and "STOP" in kinds
    assert [s for _, s in r.state_sequence()][-1] in ("FAULT", "STOPPED")
    assert {c.cmd for c in r.commands} >= {"open_session", "propose", "confirm", "approve", "hold"}
    assert any(regs != r.plc_blocks[0][1] for _, regs in r.plc_blocks)
    text = field_recording.read_text()
    assert '"d"' not in text and "jws" not in text  # no private key, no signed token


def test_replay_reproduces(field_recording: Path, tmp_path: Path) -> None:
    report = asyncio.run(replay(load_recording(field_recording), tmp_path / "replay"))
    assert report.reproduces, report.table()
    assert any(r.what == "couch" and r.recorded.startswith("STOP") for r in report.rows)


def test_tampered_recording_diverges(field_recording: Path, tmp_path: Path) -> None:
    """The PLC blocks after the door opened are replaced by the block before: the door never opens."""
    lines = field_recording.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    blocks = [i for i, r in enumerate(recs) if r.get("kind") == "plc_block"]
    door_closed = recs[blocks[0]]["regs"]
    tampered = tmp_path / "tampered.jsonl"
    out = []
    for r in recs:
        if r.get("kind") == "plc_block":
            r = {**r, "regs": door_closed}
        out.append(json.dumps(r))
    tampered.write_text("\n".join(out) + "\n")
    report = asyncio.run(replay(load_recording(tampered), tmp_path / "replay"))
    assert not report.reproduces
    assert report.first_divergence() is not None
    assert "DIVERGES" in report.table()


