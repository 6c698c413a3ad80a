"""Service diagnostics: `igrtctl diag` and `igrtctl diag --bundle FILE`.

`collect(service)` is a device self-test for service engineers, read-only by
construction: it only *asks* (couch STATUS requests, PLC snapshot, files on
disk) and never commands anything. It reports couch link round trips, the
controller's own counters (CRC and framing errors, uptime, heartbeat
timeout, state, fault), axis errors of the last move, PLC link and heartbeat
age, clock skew (wall clock against the monotonic clock, and the host
against the couch controller's uptime), the audit head and a verification,
and the apply-once store's counts.

A bundle (`bundle_bytes`, `write_bundle`) is a .tar.gz of that report with
the recent daemon log, the room configuration with every secret removed, the
last audit records and a store summary. Secrets never leave: keys named like
password/secret/token/private/credential are replaced by "<redacted>", the
content of any password file is scrubbed from every member, and a user
"public key" that carries private JWK members is reported, not copied.

Anything slow (verifying the audit chain, reading SQLite, building the tar)
runs in a worker thread, so supervision on the event loop keeps its timing
while a service engineer runs diagnostics.

Why one module of ~800 lines: the report, the bundle and its redaction share
one list of what is collected and one list of what is secret; split, a new
report field could reach the bundle without passing the redaction.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import itertools
import json
import logging
import os
import re
import sqlite3
import statistics
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.audit import (
    AuditError,
    iso_utc,
    jsonable,
    list_segments,
    tail_records,
    verify,
)
from daemon.ports import CouchPort, RoomSafetyPort

log = logging.getLogger("igrt.diag")

DIAG_VERSION = 1
RTT_SAMPLES = 20
# Above this many records a full chain walk is left to `igrtctl audit verify`
# (run offline); diag then checks the links of the last VERIFY_TAIL records.
VERIFY_FULL_MAX_RECORDS = 50_000
VERIFY_TAIL = 2_000
BUNDLE_AUDIT_RECORDS = 1_000
BUNDLE_LOG_FILE_BYTES = 512 * 1024
LOG_RING_LINES = 5_000
REDACTED = "<redacted>"
# Key names whose values are secrets. `public_key` is named to be shared.
_SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|private|credential|api_?key", re.IGNORECASE)
_PUBLIC_KEYS = frozenset({"public_key"})
# JWK members that only a private key has (RFC 7518 section 6).
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_U32 = 1 << 32


# ------------------------------------------------------------------ log capture


class RecentLogs(logging.Handler):
    """The last LOG_RING_LINES formatted log lines of this process.

    igrtd logs to stderr (the journal under systemd), which a service account
    may not be able to read; this ring keeps what a bundle needs.
    """

    def __init__(self, capacity: int = LOG_RING_LINES) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a bad log line must not break logging
            self.handleError(record)


@dataclass
class _Anchor:
    """Clock readings at the start, against which drift is measured."""

    wall: float
    mono: float
    couch_uptime_ms: int | None = None
    couch_rx_mono: float | None = None
    couch_id: int | None = None  # which link the couch readings came from


_ring: RecentLogs | None = None
_anchor: _Anchor | None = None


def install(service: Any | None = None) -> RecentLogs:
    """Start capturing log lines and take the clock anchor (call once at start-up).

    Idempotent. Without this call, the first `collect` does it, and the log
    and drift figures then start at that moment.
    """
    global _ring, _anchor
    if _ring is None:
        _ring = RecentLogs()
        root = logging.getLogger()
        root.addHandler(_ring)
        # INFO lines matter in a bundle even if the root logger was left at WARNING.
        if root.level > logging.INFO or root.level == logging.NOTSET:
            _ring.setLevel(logging.INFO)
    if _anchor is None:
        _anchor = _Anchor(time.time(), time.monotonic())
    couch = getattr(service, "couch", None)
    if couch is not None and (_anchor.couch_uptime_ms is None or _anchor.couch_id != id(couch)):
        _anchor_couch(couch)
    return _ring


def _anchor_couch(couch: CouchPort) -> None:
    assert _anchor is not None
    st = couch.latest_status
    if st is not None:
        _anchor.couch_uptime_ms = int(st.uptime_ms)
        _anchor.couch_rx_mono = float(st.received_at)
        _anchor.couch_id = id(couch)


def recent_log_lines() -> list[str]:
    return list(_ring.lines) if _ring is not None else []


# ------------------------------------------------------------------ collect


def _quantiles_us(samples: list[float]) -> dict[str, float]:
    us = sorted(s * 1e6 for s in samples)
    if not us:
        return {}
    p95 = us[min(len(us) - 1, round(0.95 * (len(us) - 1)))]
    return {"min_us": round(us[0], 1), "p50_us": round(statistics.median(us), 1),
            "p95_us": round(p95, 1), "max_us": round(us[-1], 1)}


async def _couch_rtt(couch: CouchPort, samples: int) -> dict[str, Any]:
    """Time `samples` STATUS requests; give up after 3 failures in a row."""
    rtts: list[float] = []
    failures: list[str] = []
    consecutive = 0
    for _ in range(samples):
        t0 = time.perf_counter()
        try:
            await couch.status(retries=0)  # a lost reply is a finding, not retried
        except Exception as exc:  # noqa: BLE001 - timeouts, link loss: counted, reported
            failures.append(str(exc))
            consecutive += 1
            if consecutive >= 3:
                break
            continue
        consecutive = 0
        rtts.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"requests": len(rtts) + len(failures), "answered": len(rtts),
                           "failed": len(failures), **_quantiles_us(rtts)}
    if failures:
        out["last_failure"] = failures[-1]
    return out


def _controller(couch: CouchPort) -> dict[str, Any]:
    from safety.pose import AXES

    st = couch.latest_status
    # Port and timings are the serial driver's own settings, not part of the port
    # Protocol: reported when the link has them.
    out: dict[str, Any] = {
        "port": getattr(couch, "port", None),
        "link_ok": bool(couch.link_ok),
        "heartbeat_interval_ms": _ms(getattr(couch, "heartbeat_interval_s", None)),
        "reply_timeout_ms": _ms(getattr(couch, "reply_timeout_s", None)),
        "link_timeout_ms": _ms(getattr(couch, "link_timeout_s", None)),
    }
    last_rx = getattr(couch, "last_rx", None)
    if last_rx:
        out["last_frame_age_ms"] = round((time.monotonic() - last_rx) * 1000, 1)
    if st is None:
        out["status"] = None
        return out
    out["status"] = {
        "state": str(st.state),
        "fault_code": str(st.fault_code),
        "axis_faults": [a for a, f in zip(AXES, st.faults) if f],
        "moving_axes": [a for a, m in zip(AXES, st.moving) if m],
        "crc_errors": int(st.crc_errors),
        "framing_errors": int(st.framing_errors),
        "heartbeat_timeout_ms": int(st.heartbeat_timeout_ms),
        "uptime_ms": int(st.uptime_ms),
        "uptime_s": round(st.uptime_ms / 1000.0, 3),
        "echo_id": int(st.echo_id),
        "pose": st.pose.as_dict(),
        "age_ms": round((time.monotonic() - st.received_at) * 1000, 1),
    }
    # The counters saturate at 65535 on the wire (docs/protocols/couch-serial.md).
    out["status"]["counters_saturated"] = st.crc_errors >= 0xFFFF or st.framing_errors >= 0xFFFF
    return out


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else round(float(seconds) * 1000, 3)


def _axes(service: Any) -> dict[str, Any]:
    """Commanded against actual: the last verified move, and a move under way."""
    from safety.pose import AXES, ROTATION_AXES

    out: dict[str, Any] = {}
    last = getattr(service, "last_result", None)
    if isinstance(last, dict) and isinstance(last.get("error"), dict):
        err = {a: float(last["error"][a]) for a in AXES if a in last["error"]}
        out["last_move"] = {
            "proposal_id": last.get("proposal_id"),
            "confirmation_id": last.get("confirmation_id"),
            "outcome": last.get("outcome"),
            "target": last.get("target"),
            "reached": last.get("reached"),
            "error": err,
            "max_translation_error_mm": round(max(
                (abs(v) for a, v in err.items() if a not in ROTATION_AXES), default=0.0), 4),
            "max_rotation_error_deg": round(max(
                (abs(v) for a, v in err.items() if a in ROTATION_AXES), default=0.0), 4),
        }
    else:
        out["last_move"] = None
    active = getattr(service, "active", None)
    couch: CouchPort | None = getattr(service, "couch", None)
    st = couch.latest_status if couch is not None else None
    if active is not None and st is not None:
        target = active.started.target
        out["moving"] = {
            "confirmation_id": active.started.confirmation_id,
            "commanded": target.as_dict(),
            "actual": st.pose.as_dict(),
            "remaining": target.minus(st.pose).as_dict(),
            "moving_for_s": round(time.monotonic() - active.started.started_mono, 3),
        }
    else:
        out["moving"] = None
    return out


def _plc(service: Any) -> dict[str, Any]:
    plc: RoomSafetyPort | None = getattr(service, "plc", None)
    if plc is None:
        return {"configured": False}
    out: dict[str, Any] = {"configured": True}
    try:
        snap = plc.snapshot()
    except Exception as exc:  # noqa: BLE001 - adapter mid-reconnect: report, not fail
        out["error"] = f"snapshot failed: {exc}"
        return out
    out["link_ok"] = bool(snap.link_ok)
    out["link_reason"] = str(snap.link_reason)
    if snap.heartbeat is not None:
        out["heartbeat"] = int(snap.heartbeat)
    if snap.fault_code is not None:
        out["fault_code"] = int(snap.fault_code)
    age = snap.heartbeat_age_s
    out["heartbeat_age_ms"] = round(age * 1000, 1) if age != float("inf") else None
    if snap.read_at > 0:
        out["last_read_age_ms"] = round((time.monotonic() - snap.read_at) * 1000, 1)
    # The polling period is the Modbus driver's setting, not part of the port Protocol.
    poll = getattr(plc, "poll_interval_s", None)
    if isinstance(poll, (int, float)):
        out["poll_interval_ms"] = round(poll * 1000, 3)
    try:
        out["open_interlocks"] = list(plc.open_interlocks(snap))
    except Exception as exc:  # noqa: BLE001 - diag reports what it cannot read
        out["open_interlocks_error"] = str(exc)
    return out


def _clock(service: Any) -> dict[str, Any]:
    assert _anchor is not None
    now_wall, now_mono = time.time(), time.monotonic()
    elapsed = now_mono - _anchor.mono
    out: dict[str, Any] = {
        "wall_time": iso_utc(now_wall),
        "monotonic_s": round(now_mono, 6),
        "anchor_wall_time": iso_utc(_anchor.wall),
        "since_anchor_s": round(elapsed, 3),
        # NTP steps and slews show here; the daemon times everything safety
        # related on the monotonic clock, so this is informational.
        "wall_minus_monotonic_ms": round(((now_wall - _anchor.wall) - elapsed) * 1000, 3),
    }
    couch_link: CouchPort | None = getattr(service, "couch", None)
    st = couch_link.latest_status if couch_link is not None else None
    if (couch_link is None or st is None or _anchor.couch_uptime_ms is None
            or _anchor.couch_rx_mono is None):
        out["couch"] = None
        return out
    host_s = st.received_at - _anchor.couch_rx_mono
    couch_ms = (int(st.uptime_ms) - _anchor.couch_uptime_ms) % _U32  # uptime wraps at 2^32 ms
    # A crystal drifts by ppm; an uptime that moved by more than 1 % + 1 s
    # away from the host's elapsed time means the controller restarted.
    restarted = abs(couch_ms - host_s * 1000) > host_s * 10 + 1000
    couch: dict[str, Any] = {"host_elapsed_s": round(host_s, 3),
                             "controller_uptime_s": round(st.uptime_ms / 1000.0, 3),
                             "controller_restarted": restarted}
    if restarted:
        _anchor_couch(couch_link)  # measure afresh from here
    else:
        couch["controller_elapsed_s"] = round(couch_ms / 1000.0, 3)
        couch["skew_ms"] = round(couch_ms - host_s * 1000, 1)
        # ppm only means something over a long enough window: +-1 ms of
        # uptime resolution and reply jitter over 10 s is already 100 ppm.
        if host_s >= 10.0:
            couch["drift_ppm"] = round((couch_ms / 1000.0 - host_s) / host_s * 1e6, 1)
    out["couch"] = couch
    return out


def _verify_tail(directory: Path, n: int) -> dict[str, Any]:
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
                  full_max: int = VERIFY_FULL_MAX_RECORDS) -> dict[str, Any]:
    """Head, segments and a verification (whole chain if small enough)."""
    directory = Path(directory)
    seq, digest = head if head else (None, None)
    out: dict[str, Any] = {"directory": str(directory), "head_seq": seq, "head_hash": digest}
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
        out["verify"] = {"scope": f"last {VERIFY_TAIL} records", **_verify_tail(directory,
                                                                               VERIFY_TAIL),
                         "note": f"{seq} records: run `igrtctl audit verify` for the whole "
                                 "chain"}
    return out


def store_summary(db: Path, recent_moves: int = 20) -> dict[str, Any]:
    """Counts from the apply-once store, read through its own read-only connection."""
    db = Path(db)
    if not db.exists():
        return {"path": str(db), "exists": False}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        con.row_factory = sqlite3.Row
        count = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("proposals", "confirmations", "moves", "jti")}
        by_state = {r["state"]: r["n"] for r in con.execute(
            "SELECT state, count(*) AS n FROM moves GROUP BY state ORDER BY state")}
        rows = con.execute("SELECT confirmation_id, proposal_id, state, target, started_at, "
                           "ended_at, detail FROM moves ORDER BY started_at DESC LIMIT ?",
                           (recent_moves,)).fetchall()
        schema = con.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        return {"path": str(db), "exists": True, "error": str(exc)}
    finally:
        con.close()
    moves = []
    for r in rows:
        m = dict(r)
        for k in ("target", "detail"):
            if m[k] is not None:
                try:
                    m[k] = json.loads(m[k])
                except ValueError:
                    pass
        moves.append(m)
    return {"path": str(db), "exists": True, "schema_version": schema, "counts": count,
            "moves_by_state": by_state,
            "moves_in_flight": by_state.get("sending", 0) + by_state.get("sent", 0),
            "recent_moves": moves}


def _process() -> dict[str, Any]:
    out: dict[str, Any] = {"pid": os.getpid(), "python": sys.version.split()[0]}
    from importlib.metadata import PackageNotFoundError, version

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


def _state_dir(service: Any) -> Path | None:
    d = getattr(getattr(service, "config", None), "state_dir", None)
    return Path(d) if d is not None else None


async def collect(service: Any, *, rtt_samples: int = RTT_SAMPLES) -> dict[str, Any]:
    """The self-test report for `igrtctl diag` (JSON-ready dict). Never commands motion.

    `service` is a RoomService or a stand-in with some of its attributes (what
    is absent is reported absent); its couch and PLC are read through the
    port Protocols of daemon/ports.py."""
    install(service)
    t0 = time.perf_counter()
    # Event-loop lag: how late a zero-length sleep comes back, i.e. how busy
    # supervision's loop is right now.
    lag0 = time.perf_counter()
    await asyncio.sleep(0)
    loop_lag_us = (time.perf_counter() - lag0) * 1e6
    report: dict[str, Any] = {
        "v": DIAG_VERSION,
        "room": getattr(getattr(service, "config", None), "room", None),
        "collected_at": iso_utc(time.time()),
        "process": {**_process(), "event_loop_lag_us": round(loop_lag_us, 1)},
    }
    wf = getattr(service, "workflow", None)
    report["workflow"] = None if wf is None else {
        "state": str(wf.state), "reason": getattr(wf, "reason", None),
        "session_open": getattr(service, "session", None) is not None,
    }
    couch = getattr(service, "couch", None)
    if couch is None:
        report["couch"] = {"configured": False}
    else:
        rtt = await _couch_rtt(couch, rtt_samples)
        report["couch"] = {"round_trip": rtt, **_controller(couch)}
    report["axes"] = _axes(service)
    report["plc"] = _plc(service)
    report["clock"] = _clock(service)
    state_dir = _state_dir(service)
    audit_log = getattr(service, "audit_log", None)
    audit_dir = getattr(audit_log, "directory", None) or (state_dir / "audit" if state_dir
                                                         else None)
    head = getattr(audit_log, "head", None)
    head = tuple(head) if head else None  # type: ignore[assignment]
    if audit_dir is not None:
        try:
            report["audit"] = await asyncio.to_thread(audit_summary, Path(audit_dir), head)
        except (OSError, AuditError) as exc:
            report["audit"] = {"directory": str(audit_dir), "error": str(exc)}
    else:
        report["audit"] = None
    store = getattr(service, "store", None)
    db = getattr(store, "path", None) or (state_dir / "igrt.sqlite" if state_dir else None)
    report["store"] = await asyncio.to_thread(store_summary, Path(db)) if db else None
    report["duration_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return report


# ------------------------------------------------------------------ secrets


def _is_secret_key(key: str) -> bool:
    return key not in _PUBLIC_KEYS and bool(_SECRET_KEY.search(key))


def redact(value: Any, warnings: list[str], where: str = "") -> Any:
    """`value` with every secret-named key's value replaced by REDACTED."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if _is_secret_key(str(k)):
                out[k] = REDACTED if v is not None else None
            elif k == "public_key" and isinstance(v, dict):
                private = sorted(_PRIVATE_JWK_MEMBERS & set(v))
                if private:
                    warnings.append(f"{path} holds private key members {private}: "
                                    "not copied; replace it with the public key only")
                    out[k] = REDACTED
                else:
                    out[k] = redact(v, warnings, path)
            else:
                out[k] = redact(v, warnings, path)
        return out
    if isinstance(value, list):
        return [redact(v, warnings, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _secret_strings(config: Any) -> list[str]:
    """Secret values to scrub from every text that goes into a bundle:
    password-file contents and any string under a secret-named key."""
    found: list[str] = []

    def walk(v: Any, secret: bool) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "public_key":
                    if isinstance(x, dict):  # only private JWK members of it are secret
                        for m in _PRIVATE_JWK_MEMBERS & set(x):
                            walk(x[m], True)
                    continue
                key_secret = _is_secret_key(str(k))
                if key_secret and isinstance(x, str) and k.endswith("_file"):
                    try:
                        content = Path(x).read_text(encoding="utf-8", errors="replace")
                    except OSError:
                        content = ""
                    found.extend(s for s in (content, content.strip()) if len(s) >= 4)
                walk(x, secret or key_secret)
        elif isinstance(v, list):
            for x in v:
                walk(x, secret)
        elif secret and isinstance(v, str) and len(v) >= 4:
            found.append(v)

    walk(_config_dict(config), False)
    # Longest first, so a secret that contains another is scrubbed whole.
    return sorted(set(found), key=len, reverse=True)


def _config_dict(config: Any) -> Any:
    if config is None:
        return None
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return jsonable(config)


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, REDACTED)
    return text


# ------------------------------------------------------------------ bundle


def _log_files(service: Any) -> list[Path]:
    """Daemon log files we know of: a configured one, *.log in state and log dirs."""
    config = getattr(service, "config", None)
    found: list[Path] = []
    for name in ("log_file", "log_path"):
        p = getattr(config, name, None)
        if p:
            found.append(Path(p))
    dirs = [d for d in (_state_dir(service), Path(os.environ.get("LOGS_DIRECTORY", "/var/log/igrt")))
            if d is not None]
    for d in dirs:
        try:
            found.extend(sorted(p for p in d.glob("*.log") if p.is_file()))
        except OSError:
            continue
    seen: set[Path] = set()
    unique = []
    for p in found:
        rp = p.resolve()
        if rp not in seen and p.is_file():
            seen.add(rp)
            unique.append(p)
    return unique


def _tail_bytes(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        data = f.read()
    if size > limit:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else data
    return data


def _audit_lines(directory: Path, n: int) -> str:
    try:
        recs = tail_records(directory, n)
    except (AuditError, OSError) as exc:
        return json.dumps({"error": str(exc)}) + "\n"
    return "".join(json.dumps(r.to_dict(), separators=(",", ":"), ensure_ascii=False) + "\n"
                   for r in recs)


def bundle_bytes(service: Any, report: dict[str, Any], *,
                 audit_records: int = BUNDLE_AUDIT_RECORDS) -> tuple[bytes, dict[str, Any]]:
    """The diagnostics bundle as .tar.gz bytes, and its manifest.

    Blocking (reads files, compresses): call through asyncio.to_thread from the loop.
    """
    config = getattr(service, "config", None)
    warnings: list[str] = []
    secrets = _secret_strings(config)
    room = str(report.get("room") or "room")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"igrt-diag-{room}-{stamp}"
    members: dict[str, bytes] = {}

    def text(name: str, body: str) -> None:
        members[name] = _scrub(body, secrets).encode("utf-8")

    config_view = redact(_config_dict(config), warnings)
    text("config.json", json.dumps(config_view, indent=2, sort_keys=True, default=str) + "\n")
    state_dir = _state_dir(service)
    audit_dir = getattr(getattr(service, "audit_log", None), "directory", None) or (
        state_dir / "audit" if state_dir else None)
    if audit_dir is not None and Path(audit_dir).is_dir():
        text("audit-tail.jsonl", _audit_lines(Path(audit_dir), audit_records))
    store = report.get("store")
    text("store.json", json.dumps(store, indent=2, default=str) + "\n")
    ring = recent_log_lines()
    text("logs/igrtd-recent.log", "\n".join(ring) + ("\n" if ring else ""))
    for p in _log_files(service):
        try:
            data = _tail_bytes(p, BUNDLE_LOG_FILE_BYTES)
        except OSError as exc:
            warnings.append(f"log {p}: {exc.strerror}")
            continue
        text(f"logs/{p.name}", data.decode("utf-8", errors="replace"))
    text("diag.json", json.dumps({**report, "bundle_warnings": warnings}, indent=2,
                                 default=str) + "\n")
    manifest = {
        "v": DIAG_VERSION,
        "room": room,
        "created_at": iso_utc(time.time()),
        "members": {name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                    for name, b in sorted(members.items())},
        "warnings": warnings,
        "redaction": "secret-named keys replaced by <redacted>; password-file contents "
                     "scrubbed from every member",
    }
    members["MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(body)
            info.mtime = int(now)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue(), manifest


def offline_report(service: Any) -> dict[str, Any]:
    """What `collect` reports without asking any device (for a blocking caller)."""
    install(service)
    state_dir = _state_dir(service)
    audit_log = getattr(service, "audit_log", None)
    audit_dir = getattr(audit_log, "directory", None) or (state_dir / "audit" if state_dir
                                                         else None)
    head = getattr(audit_log, "head", None)
    db = getattr(getattr(service, "store", None), "path", None) or (
        state_dir / "igrt.sqlite" if state_dir else None)
    couch = getattr(service, "couch", None)
    return {
        "v": DIAG_VERSION,
        "room": getattr(getattr(service, "config", None), "room", None),
        "collected_at": iso_utc(time.time()),
        "process": _process(),
        "couch": None if couch is None else {"round_trip": None, **_controller(couch)},
        "axes": _axes(service),
        "plc": _plc(service),
        "clock": _clock(service),
        "audit": audit_summary(Path(audit_dir), tuple(head) if head else None)
        if audit_dir else None,
        "store": store_summary(Path(db)) if db else None,
    }


def write_bundle(service: Any, path: Path, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the bundle to `path` (0600, atomically); returns its manifest plus path,
    size and sha256. Without `report`, the device-free `offline_report` is used."""
    data, manifest = bundle_bytes(service, report if report is not None else
                                  offline_report(service))
    return save_bundle(data, Path(path), manifest)


def save_bundle(data: bytes, path: Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write bundle bytes to `path` without ever exposing a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return {**(manifest or {}), "path": str(path), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


async def diag_command(service: Any, *, bundle: bool = False) -> dict[str, Any]:
    """The `diag` control command (role checks are the caller's): the report and,
    if asked, the bundle as base64 for the client to save (igrtd cannot write
    into the engineer's directories: ProtectSystem=strict)."""
    report = await collect(service)
    out: dict[str, Any] = {"report": report}
    if bundle:
        data, manifest = await asyncio.to_thread(bundle_bytes, service, report)
        out["bundle"] = {"manifest": manifest, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(),
                         "tar_gz_b64": base64.b64encode(data).decode("ascii")}
    return out


def save_bundle_reply(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """Client side of `igrtctl diag --bundle FILE`: check and write what igrtd sent."""
    b = result.get("bundle")
    if not isinstance(b, dict) or not isinstance(b.get("tar_gz_b64"), str):
        raise ValueError("igrtd sent no bundle")  # noqa: TRY004 - a bad reply, not a bad call
    data = base64.b64decode(b["tar_gz_b64"], validate=True)
    if hashlib.sha256(data).hexdigest() != b.get("sha256"):
        raise ValueError("bundle damaged in transit (sha256 differs)")
    return save_bundle(data, path, b.get("manifest"))


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A human reading of the report for `igrtctl diag` without --json."""
    lines = [f"room {report.get('room')}  at {report.get('collected_at')}"]
    wf = report.get("workflow") or {}
    if wf:
        lines.append(f"workflow: {wf.get('state')} ({wf.get('reason')})")
    c = report.get("couch") or {}
    rt = c.get("round_trip") or {}
    if rt:
        lines.append(f"couch link {c.get('port')}: {rt.get('answered')}/{rt.get('requests')} "
                     f"STATUS answered, round trip min {rt.get('min_us')} / p50 "
                     f"{rt.get('p50_us')} / max {rt.get('max_us')} us")
    st = c.get("status") or {}
    if st:
        lines.append(f"couch controller: {st['state']}, fault {st['fault_code']}, crc errors "
                     f"{st['crc_errors']}, framing errors {st['framing_errors']}, uptime "
                     f"{st['uptime_s']:.1f} s, heartbeat timeout {st['heartbeat_timeout_ms']} ms")
    last = (report.get("axes") or {}).get("last_move")
    if last:
        lines.append(f"last move {last.get('outcome')}: max error "
                     f"{last['max_translation_error_mm']} mm, {last['max_rotation_error_deg']} deg")
    plc = report.get("plc") or {}
    if plc.get("configured"):
        lines.append(f"PLC: link {'up' if plc.get('link_ok') else 'DOWN'}, heartbeat age "
                     f"{plc.get('heartbeat_age_ms')} ms, open {plc.get('open_interlocks')}")
    else:
        lines.append("PLC: not configured")
    clk = report.get("clock") or {}
    if clk:
        cc = clk.get("couch") or {}
        lines.append(f"clock: wall-monotonic {clk.get('wall_minus_monotonic_ms')} ms over "
                     f"{clk.get('since_anchor_s')} s; couch skew {cc.get('skew_ms')} ms")
    a = report.get("audit") or {}
    v = a.get("verify") or {}
    if a:
        lines.append(f"audit: head seq {a.get('head_seq')}, verify ({v.get('scope')}) "
                     f"{'OK' if v.get('ok') else 'FAILED: ' + str(v.get('problem'))}")
    s = report.get("store") or {}
    if s.get("counts"):
        lines.append(f"store: {s['counts']}, moves in flight {s.get('moves_in_flight')}")
    return lines


__all__ = [
    "RecentLogs", "audit_summary", "bundle_bytes", "collect", "diag_command",
    "install", "offline_report", "recent_log_lines", "redact", "save_bundle",
    "save_bundle_reply", "store_summary", "summary_lines", "write_bundle",
]
