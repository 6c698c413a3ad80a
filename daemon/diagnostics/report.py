"""The self-test report: `collect` (asks the devices), `offline_report`, `summary_lines`.

The report is a JSON object (it travels as the `diag` reply and goes into the
bundle as diag.json); docs/service-mode.md describes its sections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from daemon.audit import AuditError, iso_utc
from daemon.diagnostics import devices
from daemon.diagnostics.capture import install
from daemon.diagnostics.records import audit_summary, process_info, store_summary
from daemon.diagnostics.subject import Subject
from daemon.jsontypes import JsonMapping, JsonObject

DIAG_VERSION = 1
RTT_SAMPLES = 20


async def collect(service: object, *, rtt_samples: int = RTT_SAMPLES) -> JsonObject:
    """The self-test report for `igrtctl diag` (JSON-ready dict). Never commands motion.

    `service` is a RoomService or a stand-in with some of its attributes (what
    is absent is reported absent, see daemon/diagnostics/subject.py); its couch
    and PLC are read through the port Protocols of daemon/ports.py."""
    install(service)
    subject = Subject.of(service)
    t0 = time.perf_counter()
    # Event-loop lag: how late a zero-length sleep comes back, i.e. how busy
    # supervision's loop is right now.
    lag0 = time.perf_counter()
    await asyncio.sleep(0)
    loop_lag_us = (time.perf_counter() - lag0) * 1e6
    report: JsonObject = {
        "v": DIAG_VERSION,
        "room": subject.room,
        "collected_at": iso_utc(time.time()),
        "process": {**process_info(), "event_loop_lag_us": round(loop_lag_us, 1)},
    }
    wf = subject.workflow
    report["workflow"] = None if wf is None else {
        "state": str(wf.state), "reason": wf.reason, "session_open": subject.session_open,
    }
    couch = subject.couch
    if couch is None:
        report["couch"] = {"configured": False}
    else:
        rtt = await devices.couch_rtt(couch, rtt_samples)
        report["couch"] = {"round_trip": rtt, **devices.controller(couch)}
    report["axes"] = devices.axes(subject)
    report["plc"] = devices.plc(subject.plc)
    report["clock"] = devices.clock(subject.couch)
    audit_dir = subject.audit_dir
    if audit_dir is not None:
        try:
            report["audit"] = await asyncio.to_thread(audit_summary, audit_dir,
                                                      subject.audit_head)
        except (OSError, AuditError) as exc:
            report["audit"] = {"directory": str(audit_dir), "error": str(exc)}
    else:
        report["audit"] = None
    db = subject.store_path
    report["store"] = await asyncio.to_thread(store_summary, db) if db else None
    report["duration_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return report


def offline_report(service: object) -> JsonObject:
    """What `collect` reports without asking any device (for a blocking caller)."""
    install(service)
    subject = Subject.of(service)
    audit_dir, db, couch = subject.audit_dir, subject.store_path, subject.couch
    return {
        "v": DIAG_VERSION,
        "room": subject.room,
        "collected_at": iso_utc(time.time()),
        "process": process_info(),
        "couch": None if couch is None else {"round_trip": None, **devices.controller(couch)},
        "axes": devices.axes(subject),
        "plc": devices.plc(subject.plc),
        "clock": devices.clock(couch),
        "audit": audit_summary(audit_dir, subject.audit_head) if audit_dir else None,
        "store": store_summary(db) if db else None,
    }


def _section(value: object) -> JsonMapping:
    """A report section to read from; {} if absent (or not an object)."""
    return value if isinstance(value, Mapping) else {}


def summary_lines(report: JsonMapping) -> list[str]:
    """A human reading of the report for `igrtctl diag` without --json."""
    lines = [f"room {report.get('room')}  at {report.get('collected_at')}"]
    wf = _section(report.get("workflow"))
    if wf:
        lines.append(f"workflow: {wf.get('state')} ({wf.get('reason')})")
    c = _section(report.get("couch"))
    rt = _section(c.get("round_trip"))
    if rt:
        lines.append(f"couch link {c.get('port')}: {rt.get('answered')}/{rt.get('requests')} "
                     f"STATUS answered, round trip min {rt.get('min_us')} / p50 "
                     f"{rt.get('p50_us')} / max {rt.get('max_us')} us")
    st = _section(c.get("status"))
    if st:
        lines.append(f"couch controller: {st['state']}, fault {st['fault_code']}, crc errors "
                     f"{st['crc_errors']}, framing errors {st['framing_errors']}, uptime "
                     f"{st['uptime_s']:.1f} s, heartbeat timeout {st['heartbeat_timeout_ms']} ms")
    last = _section(_section(report.get("axes")).get("last_move"))
    if last:
        lines.append(f"last move {last.get('outcome')}: max error "
                     f"{last['max_translation_error_mm']} mm, {last['max_rotation_error_deg']} deg")
    plc = _section(report.get("plc"))
    if plc.get("configured"):
        lines.append(f"PLC: link {'up' if plc.get('link_ok') else 'DOWN'}, heartbeat age "
                     f"{plc.get('heartbeat_age_ms')} ms, open {plc.get('open_interlocks')}")
    else:
        lines.append("PLC: not configured")
    clk = _section(report.get("clock"))
    if clk:
        cc = _section(clk.get("couch"))
        lines.append(f"clock: wall-monotonic {clk.get('wall_minus_monotonic_ms')} ms over "
                     f"{clk.get('since_anchor_s')} s; couch skew {cc.get('skew_ms')} ms")
    a = _section(report.get("audit"))
    v = _section(a.get("verify"))
    if a:
        lines.append(f"audit: head seq {a.get('head_seq')}, verify ({v.get('scope')}) "
                     f"{'OK' if v.get('ok') else 'FAILED: ' + str(v.get('problem'))}")
    s = _section(report.get("store"))
    if s.get("counts"):
        lines.append(f"store: {s['counts']}, moves in flight {s.get('moves_in_flight')}")
    return lines
