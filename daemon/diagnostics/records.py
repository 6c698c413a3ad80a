"""What the self-test reads from disk and from the process: audit, store, process.

All blocking (a chain walk, SQLite, /proc): `collect` runs the audit and store
summaries in a worker thread so supervision on the event loop keeps its timing.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from daemon.audit import AuditError, list_segments, tail_records, verify
from daemon.jsontypes import JsonObject, JsonValue

# Above this many records a full chain walk is left to `igrtctl audit verify`
# (run offline); diag then checks the links of the last VERIFY_TAIL records.
VERIFY_FULL_MAX_RECORDS = 50_000
VERIFY_TAIL = 2_000


def _verify_tail(directory: Path, n: int) -> JsonObject:
    """Check the links of the last n records (self-hash and prev_hash)."""
    try:
        recs = tail_records(directory, n)
    except AuditError as exc:
        return {"ok": False, "records": 0, "problem": str(exc)}
    for prev, rec in itertools.pairwise(recs):
        if rec.seq != prev.seq + 1 or rec.prev_hash != prev.hash:
            return {"ok": False, "records": len(recs),
                    "problem": f"record seq {rec.seq} does not follow seq {prev.seq}"}
    return {"ok": True, "records": len(recs), "problem": ""}


def audit_summary(directory: Path, head: tuple[int, str] | None,
                  full_max: int = VERIFY_FULL_MAX_RECORDS) -> JsonObject:
    """Head, segments and a verification (whole chain if small enough)."""
    directory = Path(directory)
    seq, digest = head if head else (None, None)
    out: JsonObject = {"directory": str(directory), "head_seq": seq, "head_hash": digest}
    if not directory.is_dir():
        out["verify"] = {"ok": False, "scope": "none", "problem": "no audit directory"}
        return out
    segments = list_segments(directory)
    out["segments"] = len(segments)
    out["bytes"] = sum(p.stat().st_size for _, p in segments)
    if seq is None or seq <= full_max:
        t0 = time.perf_counter()
        r = verify(directory)
        out["verify"] = {"ok": r.ok, "scope": "full", "records": r.records,
                         "first_bad": r.first_bad, "problem": r.problem,
                         "warnings": list(r.warnings), "verified_head_seq": r.head_seq,
                         "verified_head_hash": r.head_hash,
                         "duration_ms": round((time.perf_counter() - t0) * 1000, 1)}
        if out["head_seq"] is None:
            out["head_seq"], out["head_hash"] = r.head_seq, r.head_hash
    else:
        out["verify"] = {"scope": f"last {VERIFY_TAIL} records",
                         **_verify_tail(directory, VERIFY_TAIL),
                         "note": f"{seq} records: run `igrtctl audit verify` for the whole "
                                 "chain"}
    return out


def store_summary(db: Path, recent_moves: int = 20) -> JsonObject:
    """Counts from the apply-once store, read through its own read-only connection."""
    db = Path(db)
    if not db.exists():
        return {"path": str(db), "exists": False}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        con.row_factory = sqlite3.Row
        count: JsonObject = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                             for t in ("proposals", "confirmations", "moves", "jti")}
        by_state: dict[str, int] = {r["state"]: r["n"] for r in con.execute(
            "SELECT state, count(*) AS n FROM moves GROUP BY state ORDER BY state")}
        rows = con.execute("SELECT confirmation_id, proposal_id, state, target, started_at, "
                           "ended_at, detail FROM moves ORDER BY started_at DESC LIMIT ?",
                           (recent_moves,)).fetchall()
        schema = con.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        return {"path": str(db), "exists": True, "error": str(exc)}
    finally:
        con.close()
    moves: list[JsonValue] = []
    for r in rows:
        m: JsonObject = dict(r)
        for k in ("target", "detail"):
            text = m[k]
            if isinstance(text, str):  # stored as JSON text; left as is if it is not JSON
                try:
                    m[k] = json.loads(text)
                except ValueError:
                    pass
        moves.append(m)
    return {"path": str(db), "exists": True, "schema_version": schema, "counts": count,
            "moves_by_state": {state: n for state, n in by_state.items()},
            "moves_in_flight": by_state.get("sending", 0) + by_state.get("sent", 0),
            "recent_moves": moves}


def process_info() -> JsonObject:
    """pid, versions, RSS, threads and open file descriptors of this process."""
    out: JsonObject = {"pid": os.getpid(), "python": sys.version.split()[0]}
    try:
        out["igrt_version"] = version("igrt")
    except PackageNotFoundError:  # running from a checkout
        out["igrt_version"] = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "Threads:")):
                key, value = line.split(":", 1)
                out[key.lower()] = value.strip()
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return out
