"""kill -9 at random moments: nothing acknowledged is lost, nothing moves twice.

This covers the audit and apply-once layers alone (the daemon-level crash
test restarts the whole igrtd). Random kill points come from a fixed seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.audit import list_segments, read_records, verify
from daemon.store import CorrectionStore

CHILD = Path(__file__).with_name("crash_child.py")
REPO = Path(__file__).resolve().parents[2]
CYCLES = 50
SEED = 20260507


def run_until_killed(audit_dir: Path, db: Path, rng: random.Random) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(audit_dir), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert child.stdout is not None
    head = b""
    if rng.random() < 0.3:
        # Anywhere, including during start-up and recovery.
        time.sleep(rng.uniform(0.0, 0.3))
    else:
        # In the main loop: after start-up acknowledgements, a short while in.
        while True:
            line = child.stdout.readline()
            head += line
            if line in (b"READY\n", b""):
                break
        time.sleep(rng.uniform(0.0, 0.05))
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    # Only whole lines count: a line being printed at the kill is not an ack.
    return (head + out).decode(errors="replace").split("\n")[:-1]


def tear_last_segment(audit_dir: Path, rng: random.Random) -> None:
    """What power loss adds on top of kill -9: a half-written final line."""
    if not audit_dir.is_dir():
        return  # killed before its first start created the directory (a loaded machine)
    segments = list_segments(audit_dir)
    if segments:
        fake = b'{"seq":999999,"time":"2026-05-07T00:00:00Z","event":"motion","actor":"x"}'
        with segments[-1][1].open("ab") as f:
            f.write(fake[: rng.randint(1, len(fake) - 1)])


def test_kill_9_loses_no_acknowledged_record_and_never_moves_twice(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    audit_dir, db = tmp_path / "audit", tmp_path / "state.db"
    acked: dict[int, str] = {}
    claimed: list[str] = []
    torn = 0
    for _ in range(CYCLES):
        for line in run_until_killed(audit_dir, db, rng):
            if line.startswith("A "):
                _, seq, digest = line.split()
                assert acked.setdefault(int(seq), digest) == digest, f"seq {seq} acked twice"
            elif line.startswith("C "):
                claimed.append(line[2:])
        if rng.random() < 0.2:
            tear_last_segment(audit_dir, rng)
            torn += 1

    result = verify(audit_dir)
    assert result.ok, result.problem
    stored = {r.seq: r.hash for r in read_records(audit_dir)}
    lost = [seq for seq, digest in acked.items() if stored.get(seq) != digest]
    assert lost == [], f"acknowledged records lost or changed: {lost[:10]}"
    assert len(acked) > CYCLES  # the children did real work between kills
    recoveries = sum(1 for _ in read_records(audit_dir, event="audit_recovery"))
    # Torn tails were cut by the next start (unless it was killed first).
    assert torn == 0 or 0 < recoveries <= torn

    assert len(claimed) == len(set(claimed)), "a confirmation was sent twice"
    with CorrectionStore(db) as store:
        for cid in claimed:
            assert store.move_for_confirmation(cid) is not None, f"claimed {cid} not stored"
            assert not store.claim_move(cid, "p" + cid[1:], {}), f"{cid} could be re-sent"
        for move in store.unfinished_moves():
            assert move["confirmation_id"] in claimed
