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
last audit records and a store summary. Secrets never leave: see redaction.py.

Anything slow (verifying the audit chain, reading SQLite, building the tar)
runs in a worker thread, so supervision on the event loop keeps its timing
while a service engineer runs diagnostics.

The modules, by responsibility:

* subject.py: what is read from the room, typed (Protocols, `Subject.of`);
* capture.py: the recent-log ring and the clock anchor taken at start-up;
* devices.py: couch link and controller, axes, PLC and clock probes;
* records.py: audit chain, apply-once store and process figures;
* report.py: `collect`, `offline_report`, `summary_lines`;
* redaction.py: the one list of what is secret, redaction and scrubbing;
* bundle.py: the bundle, the `diag` command and the client's save.

The bundle writer is the only code that adds bundle members, and it scrubs
each one with what redaction.py finds, so a new report field reaches a bundle
only through the redaction (why this was one module before it was split).
"""

from __future__ import annotations

from daemon.diagnostics.bundle import (
    BUNDLE_AUDIT_RECORDS,
    BUNDLE_LOG_FILE_BYTES,
    bundle_bytes,
    diag_command,
    save_bundle,
    save_bundle_reply,
    write_bundle,
)
from daemon.diagnostics.capture import LOG_RING_LINES, RecentLogs, install, recent_log_lines
from daemon.diagnostics.records import (
    VERIFY_FULL_MAX_RECORDS,
    VERIFY_TAIL,
    audit_summary,
    store_summary,
)
from daemon.diagnostics.redaction import REDACTED, redact
from daemon.diagnostics.report import (
    DIAG_VERSION,
    RTT_SAMPLES,
    collect,
    offline_report,
    summary_lines,
)

__all__ = [
    "BUNDLE_AUDIT_RECORDS", "BUNDLE_LOG_FILE_BYTES", "DIAG_VERSION", "LOG_RING_LINES",
    "REDACTED", "RTT_SAMPLES", "VERIFY_FULL_MAX_RECORDS", "VERIFY_TAIL",
    "RecentLogs", "audit_summary", "bundle_bytes", "collect", "diag_command",
    "install", "offline_report", "recent_log_lines", "redact", "save_bundle",
    "save_bundle_reply", "store_summary", "summary_lines", "write_bundle",
]
