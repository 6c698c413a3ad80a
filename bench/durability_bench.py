"""Durability figures: audit append rate with fsync per record, verify and
open (recovery) cost, apply-once claim rate, systemd exposure of igrtd.service.

run() -> flat dict; the audit directory is placed next to the repo (same
filesystem as a real install's /var/lib is not guaranteed, but it is a disk,
not tmpfs, which is what matters for fsync).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from daemon.audit import AuditLog, verify
from daemon.store import CorrectionStore

REPO = Path(__file__).resolve().parents[1]
APPENDS = 600  # per round
ROUNDS = 5
SEGMENT = 100_000


def _audit_figures(base: Path) -> dict[str, float]:
    directory = base / "audit"
    details = {"proposal_id": "p-0001", "target": {"lat_mm": 1.2, "lng_mm": -0.4, "vrt_mm": 2.5}}
    # The disk is shared with other work: report the median of short rounds
    # (the figure) and the best round (what the disk does when quiet).
    rates = []
    with AuditLog(directory) as log:
        log.append("proposal", "bench", **details)  # create the segment outside the timing
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for i in range(APPENDS):
                log.append("command", "bench", seq_hint=i, **details)
            rates.append(APPENDS / (time.perf_counter() - start))
    # Fill the last segment to its size limit: start-up cost does not grow with it.
    with AuditLog(directory, fsync=False) as log:
        for i in range(SEGMENT - APPENDS * ROUNDS - 2):
            log.append("command", "bench", seq_hint=i, **details)
    start = time.perf_counter()
    with AuditLog(directory):
        open_s = time.perf_counter() - start
    start = time.perf_counter()
    result = verify(directory)
    verify_s = time.perf_counter() - start
    assert result.ok, result.problem
    return {
        "audit_append_fsync_per_s": statistics.median(rates),
        "audit_append_fsync_best_round_per_s": max(rates),
        "audit_open_full_segment_ms": open_s * 1e3,
        "audit_verify_records_per_s": result.records / verify_s,
    }


def _store_figures(base: Path) -> dict[str, float]:
    n = 500
    with CorrectionStore(base / "state.db") as store:
        start = time.perf_counter()
        for i in range(n):
            store.claim_move(f"c{i}", f"p{i}", {"lat_mm": 1.0})
            store.finish_move(f"c{i}", "completed")
        elapsed = time.perf_counter() - start
    return {"store_claim_and_finish_per_s": n / elapsed}


def _exposure() -> dict[str, float]:
    if shutil.which("systemd-analyze") is None:
        return {}
    unit = REPO / "systemd" / "igrtd.service"
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    ).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    return {"systemd_security_exposure": float(match.group(1))} if match else {}


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="igrt-durability-", dir=REPO / "bench") as tmp:
        base = Path(tmp)
        figures = _audit_figures(base)
        figures.update(_store_figures(base))
    figures.update(_exposure())
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}: {value:.3f}")
