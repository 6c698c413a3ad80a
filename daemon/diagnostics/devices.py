"""The device probes of the self-test: couch link and controller, axes, PLC, clocks.

Read-only by construction: the couch is only asked for STATUS (never
retried: a lost reply is a finding) and the PLC only for its last snapshot.
Each probe reports what it cannot read instead of failing the whole report.
"""

from __future__ import annotations

import statistics
import time

from daemon.audit import iso_utc, jsonable
from daemon.diagnostics.capture import anchor, anchor_couch
from daemon.diagnostics.subject import PolledLink, SerialLinkSettings, Subject
from daemon.jsontypes import JsonObject, JsonValue, as_float
from daemon.ports import CouchPort, RoomSafetyPort
from safety.pose import AXES, ROTATION_AXES

_U32 = 1 << 32


def _pose_json(values: dict[str, float]) -> JsonObject:
    return {axis: value for axis, value in values.items()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds) * 1000, 3)


def _quantiles_us(samples: list[float]) -> JsonObject:
    us = sorted(s * 1e6 for s in samples)
    if not us:
        return {}
    p95 = us[min(len(us) - 1, round(0.95 * (len(us) - 1)))]
    return {"min_us": round(us[0], 1), "p50_us": round(statistics.median(us), 1),
            "p95_us": round(p95, 1), "max_us": round(us[-1], 1)}


async def couch_rtt(couch: CouchPort, samples: int) -> JsonObject:
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
    out: JsonObject = {"requests": len(rtts) + len(failures), "answered": len(rtts),
                       "failed": len(failures), **_quantiles_us(rtts)}
    if failures:
        out["last_failure"] = failures[-1]
    return out


def controller(couch: CouchPort) -> JsonObject:
    """The host side of the couch link and the controller's own last status."""
    st = couch.latest_status
    # Port and timings are the serial driver's own settings, not part of the
    # port Protocol: reported when the link has them.
    serial = couch if isinstance(couch, SerialLinkSettings) else None
    out: JsonObject = {
        "port": serial.port if serial else None,
        "link_ok": bool(couch.link_ok),
        "heartbeat_interval_ms": _ms(serial.heartbeat_interval_s if serial else None),
        "reply_timeout_ms": _ms(serial.reply_timeout_s if serial else None),
        "link_timeout_ms": _ms(serial.link_timeout_s if serial else None),
    }
    if serial and serial.last_rx:
        out["last_frame_age_ms"] = round((time.monotonic() - serial.last_rx) * 1000, 1)
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
        "pose": _pose_json(st.pose.as_dict()),
        "age_ms": round((time.monotonic() - st.received_at) * 1000, 1),
        # The counters saturate at 65535 on the wire (docs/protocols/couch-serial.md).
        "counters_saturated": st.crc_errors >= 0xFFFF or st.framing_errors >= 0xFFFF,
    }
    return out


def axes(subject: Subject) -> JsonObject:
    """Commanded against actual: the last verified move, and a move under way."""
    out: JsonObject = {}
    last = subject.last_result
    error = last.get("error") if last is not None else None
    if last is not None and isinstance(error, dict):
        err = {a: as_float(error[a], f"last_result.error.{a}") for a in AXES if a in error}
        out["last_move"] = {
            "proposal_id": jsonable(last.get("proposal_id")),
            "confirmation_id": jsonable(last.get("confirmation_id")),
            "outcome": jsonable(last.get("outcome")),
            "target": jsonable(last.get("target")),
            "reached": jsonable(last.get("reached")),
            "error": _pose_json(err),
            "max_translation_error_mm": round(max(
                (abs(v) for a, v in err.items() if a not in ROTATION_AXES), default=0.0), 4),
            "max_rotation_error_deg": round(max(
                (abs(v) for a, v in err.items() if a in ROTATION_AXES), default=0.0), 4),
        }
    else:
        out["last_move"] = None
    active = subject.active
    st = subject.couch.latest_status if subject.couch is not None else None
    if active is not None and st is not None:
        target = active.started.target
        out["moving"] = {
            "confirmation_id": active.started.confirmation_id,
            "commanded": _pose_json(target.as_dict()),
            "actual": _pose_json(st.pose.as_dict()),
            "remaining": _pose_json(target.minus(st.pose).as_dict()),
            "moving_for_s": round(time.monotonic() - active.started.started_mono, 3),
        }
    else:
        out["moving"] = None
    return out


def plc(link: RoomSafetyPort | None) -> JsonObject:
    """The room PLC link: state, heartbeat and its age, open interlocks."""
    if link is None:
        return {"configured": False}
    out: JsonObject = {"configured": True}
    try:
        snap = link.snapshot()
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
    poll = link.poll_interval_s if isinstance(link, PolledLink) else None
    if isinstance(poll, int | float):
        out["poll_interval_ms"] = round(poll * 1000, 3)
    try:
        names: list[JsonValue] = list(link.open_interlocks(snap))
        out["open_interlocks"] = names
    except Exception as exc:  # noqa: BLE001 - diag reports what it cannot read
        out["open_interlocks_error"] = str(exc)
    return out


def clock(couch_link: CouchPort | None) -> JsonObject:
    """Wall clock against the monotonic clock, and the host against the couch's uptime."""
    a = anchor()
    now_wall, now_mono = time.time(), time.monotonic()
    elapsed = now_mono - a.mono
    out: JsonObject = {
        "wall_time": iso_utc(now_wall),
        "monotonic_s": round(now_mono, 6),
        "anchor_wall_time": iso_utc(a.wall),
        "since_anchor_s": round(elapsed, 3),
        # NTP steps and slews show here; the daemon times everything safety
        # related on the monotonic clock, so this is informational.
        "wall_minus_monotonic_ms": round(((now_wall - a.wall) - elapsed) * 1000, 3),
    }
    st = couch_link.latest_status if couch_link is not None else None
    if (couch_link is None or st is None or a.couch_uptime_ms is None
            or a.couch_rx_mono is None):
        out["couch"] = None
        return out
    host_s = st.received_at - a.couch_rx_mono
    couch_ms = (int(st.uptime_ms) - a.couch_uptime_ms) % _U32  # uptime wraps at 2^32 ms
    # A crystal drifts by ppm; an uptime that moved by more than 1 % + 1 s
    # away from the host's elapsed time means the controller restarted.
    restarted = abs(couch_ms - host_s * 1000) > host_s * 10 + 1000
    couch: JsonObject = {"host_elapsed_s": round(host_s, 3),
                         "controller_uptime_s": round(st.uptime_ms / 1000.0, 3),
                         "controller_restarted": restarted}
    if restarted:
        anchor_couch(couch_link)  # measure afresh from here
    else:
        couch["controller_elapsed_s"] = round(couch_ms / 1000.0, 3)
        couch["skew_ms"] = round(couch_ms - host_s * 1000, 1)
        # ppm only means something over a long enough window: +-1 ms of
        # uptime resolution and reply jitter over 10 s is already 100 ppm.
        if host_s >= 10.0:
            couch["drift_ppm"] = round((couch_ms / 1000.0 - host_s) / host_s * 1e6, 1)
    out["couch"] = couch
    return out
