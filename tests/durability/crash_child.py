"""Child process for the kill -9 crash test: igrtd's durability layer in a loop.

Usage: crash_child.py AUDIT_DIR STATE_DB

Behaves like the daemon: recover (mark unfinished moves interrupted), then
for confirmations c1, c2, ... audit first, claim the move before "sending
GO", finish it. Every cycle replays the same confirmation ids, as a console
resending after a restart would; only never-claimed ones may move. After
each durable step it prints what it acknowledged, which the parent checks
against the files after SIGKILL.
"""

from __future__ import annotations

import sys
from pathlib import Path

from daemon.audit import AuditLog
from daemon.store import CorrectionStore


def main() -> None:
    audit_dir, db_path = Path(sys.argv[1]), Path(sys.argv[2])
    audit = AuditLog(audit_dir, segment_max_records=50)
    audit.open()
    store = CorrectionStore(db_path)
    for move in store.unfinished_moves():
        rec = audit.append("interrupted", "system", confirmation_id=move["confirmation_id"])
        print(f"A {rec.seq} {rec.hash}", flush=True)
        store.mark_interrupted(move["confirmation_id"], {"reason": "restart"})
    print("READY", flush=True)
    i = 0
    while True:
        i += 1
        cid, pid = f"c{i}", f"p{i}"
        rec = audit.append("confirmation", "alice", confirmation_id=cid, proposal_id=pid)
        print(f"A {rec.seq} {rec.hash}", flush=True)
        if not store.claim_move(cid, pid, {"lat_mm": float(i)}):
            continue
        print(f"C {cid}", flush=True)  # GO may be on the wire from here on
        store.finish_move(cid, "sent")
        rec = audit.append("motion", "system", confirmation_id=cid, state="completed")
        print(f"A {rec.seq} {rec.hash}", flush=True)
        store.finish_move(cid, "completed", {"residual_mm": 0.1})


if __name__ == "__main__":
    main()
