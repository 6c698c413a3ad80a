"""The diagnostics bundle: `igrtctl diag --bundle FILE`.

A .tar.gz of the report with the recent daemon log, the room configuration
with every secret removed, the last audit records and a store summary. Every
member is written through `text()` in `bundle_bytes`, which scrubs the
secrets that daemon/diagnostics/redaction.py finds; nothing else adds members.

igrtd builds the bytes (in a worker thread: reading files and compressing
must not delay supervision) and sends them base64 in the `diag` reply; the
client checks the sha256 and writes the file, because igrtd cannot write into
the engineer's directories (ProtectSystem=strict).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

from daemon.audit import AuditError, iso_utc, tail_records
from daemon.diagnostics.capture import recent_log_lines
from daemon.diagnostics.redaction import config_json, redact, scrub, secret_strings
from daemon.diagnostics.report import DIAG_VERSION, collect, offline_report
from daemon.diagnostics.subject import Subject
from daemon.jsontypes import JsonMapping, JsonObject, JsonValue, as_object, as_str

BUNDLE_AUDIT_RECORDS = 1_000
BUNDLE_LOG_FILE_BYTES = 512 * 1024


def _log_files(subject: Subject) -> list[Path]:
    """Daemon log files we know of: *.log in the state and log directories."""
    found: list[Path] = []
    dirs = [d for d in (subject.state_dir,
                        Path(os.environ.get("LOGS_DIRECTORY", "/var/log/igrt")))
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


def bundle_bytes(service: object, report: JsonMapping, *,
                 audit_records: int = BUNDLE_AUDIT_RECORDS) -> tuple[bytes, JsonObject]:
    """The diagnostics bundle as .tar.gz bytes, and its manifest.

    Blocking (reads files, compresses): call through asyncio.to_thread from the loop.
    """
    subject = Subject.of(service)
    warnings: list[str] = []
    secrets = secret_strings(subject.config)
    room = str(report.get("room") or "room")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"igrt-diag-{room}-{stamp}"
    members: dict[str, bytes] = {}

    def text(name: str, body: str) -> None:
        members[name] = scrub(body, secrets).encode("utf-8")

    config_view = redact(config_json(subject.config), warnings)
    text("config.json", json.dumps(config_view, indent=2, sort_keys=True, default=str) + "\n")
    audit_dir = subject.audit_dir
    if audit_dir is not None and audit_dir.is_dir():
        text("audit-tail.jsonl", _audit_lines(audit_dir, audit_records))
    store = report.get("store")
    text("store.json", json.dumps(store, indent=2, default=str) + "\n")
    ring = recent_log_lines()
    text("logs/igrtd-recent.log", "\n".join(ring) + ("\n" if ring else ""))
    for p in _log_files(subject):
        try:
            data = _tail_bytes(p, BUNDLE_LOG_FILE_BYTES)
        except OSError as exc:
            warnings.append(f"log {p}: {exc.strerror}")
            continue
        text(f"logs/{p.name}", data.decode("utf-8", errors="replace"))
    text("diag.json", json.dumps({**report, "bundle_warnings": warnings}, indent=2,
                                 default=str) + "\n")
    listed: JsonObject = {name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                          for name, b in sorted(members.items())}
    warnings_json: list[JsonValue] = list(warnings)
    manifest: JsonObject = {
        "v": DIAG_VERSION,
        "room": room,
        "created_at": iso_utc(time.time()),
        "members": listed,
        "warnings": warnings_json,
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


def write_bundle(service: object, path: Path, report: JsonMapping | None = None) -> JsonObject:
    """Write the bundle to `path` (0600, atomically); returns its manifest plus path,
    size and sha256. Without `report`, the device-free `offline_report` is used."""
    data, manifest = bundle_bytes(service, report if report is not None else
                                  offline_report(service))
    return save_bundle(data, Path(path), manifest)


def save_bundle(data: bytes, path: Path, manifest: JsonObject | None = None) -> JsonObject:
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


async def diag_command(service: object, *, bundle: bool = False) -> JsonObject:
    """The `diag` control command (role checks are the caller's): the report and,
    if asked, the bundle as base64 for the client to save (igrtd cannot write
    into the engineer's directories: ProtectSystem=strict)."""
    report = await collect(service)
    out: JsonObject = {"report": report}
    if bundle:
        data, manifest = await asyncio.to_thread(bundle_bytes, service, report)
        out["bundle"] = {"manifest": manifest, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(),
                         "tar_gz_b64": base64.b64encode(data).decode("ascii")}
    return out


def save_bundle_reply(result: JsonMapping, path: Path) -> JsonObject:
    """Client side of `igrtctl diag --bundle FILE`: check and write what igrtd sent."""
    b = result.get("bundle")
    if not isinstance(b, dict) or not isinstance(b.get("tar_gz_b64"), str):
        raise ValueError("igrtd sent no bundle")  # noqa: TRY004 - a bad reply, not a bad call
    data = base64.b64decode(as_str(b["tar_gz_b64"], "bundle.tar_gz_b64"), validate=True)
    if hashlib.sha256(data).hexdigest() != b.get("sha256"):
        raise ValueError("bundle damaged in transit (sha256 differs)")
    manifest = b.get("manifest")
    return save_bundle(data, path,
                       as_object(manifest, "bundle.manifest") if manifest is not None else None)
