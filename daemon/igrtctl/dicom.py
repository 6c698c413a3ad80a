"""`igrtctl dicom status`: what igrt's DICOM storage service holds and refused,
read from its archive and audit log without the service (docs/dicom.md).

Read-only, safe while igrt-dicomd runs. For each stored series: patient,
modality, instance count, frame of reference, and for a CT series whether its
slices make one regular volume (or the one-line reason they do not); then the
latest refusals (associations and instances) with their reasons.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import TextIO

from daemon.audit import AuditError, read_records
from daemon.dicom_archive import ArchiveError, DicomArchive
from daemon.dicom_export import QUEUE_FILE, ExportQueue, QueueError
from daemon.igrtctl.dicom_retrieve import QUERY_COMMANDS, add_query_commands, run_query
from daemon.igrtctl.exits import ArgParser, ExitCode, UsageError
from daemon.jsontypes import JsonObject, JsonValue
from imaging.dicom_series import SeriesRefused

DEFAULT_DICOM_DIR = Path("/var/lib/igrt/dicom")
REFUSALS = ("dicom.association_rejected", "dicom.instance_refused")


def _parser() -> ArgParser:
    p = ArgParser(prog="igrtctl dicom", description="igrt's DICOM node: what the storage "
                  "service holds (status, read-only); the clinic's PACS (find, retrieve)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    add_query_commands(sub)  # find, retrieve: the clinic's PACS (dicom_retrieve.py)
    s = sub.add_parser("status", help="stored series and the latest refusals")
    s.add_argument("--dir", type=Path, default=None,
                   help="the service's storage directory (default $IGRT_DICOM_DIR, else "
                        f"{DEFAULT_DICOM_DIR})")
    s.add_argument("--patient", help="only this PatientID's series")
    s.add_argument("--last", type=int, default=10, metavar="N", help="refusals shown (10)")
    s.add_argument("--igrtd-audit", type=Path, default=None, metavar="DIR",
                   help="igrtd's audit log, for its judgements of daily series (default: "
                        "the audit directory beside the storage directory, when there is one)")
    s.add_argument("--json", action="store_true")
    return p


def _daily(igrtd_audit: Path | None, last: int) -> list[JsonValue]:
    """What igrtd made of the daily series that arrived (daemon/daily_series.py)."""
    if igrtd_audit is None or not igrtd_audit.is_dir():
        return []
    judged = deque((r for r in read_records(igrtd_audit) if r.event == "daily_series"),
                   maxlen=last)
    return [{"time": r.time_iso, **r.details} for r in judged]


def _status(directory: Path, patient: str | None, last: int,
            igrtd_audit: Path | None = None) -> JsonObject:
    archive = DicomArchive(directory, read_only=True)
    try:
        series: list[JsonValue] = []
        for s in archive.series(patient):
            row: JsonObject = {"series_uid": s.series_uid, "modality": s.modality,
                               "patient_id": s.patient_id, "instances": s.instances,
                               "frame_of_reference_uid": s.frame_of_reference_uid}
            if s.modality == "CT":
                try:
                    geo = archive.series_geometry(s.series_uid)
                    row["volume"] = (f"{len(geo.slices)} slices {geo.rows}x{geo.columns}, "
                                     f"{geo.spacing_mm:.3f} mm apart")
                except (SeriesRefused, ArchiveError) as exc:
                    row["refused"] = str(exc)
            series.append(row)
    finally:
        archive.close()
    refusals: list[JsonValue] = []
    audit = directory / "audit"
    if audit.is_dir():
        for rec in deque((r for r in read_records(audit) if r.event in REFUSALS), maxlen=last):
            refusals.append({"time": rec.time_iso, "event": rec.event, "actor": rec.actor,
                             **rec.details})
    return {"directory": str(directory), "series": series, "refusals": refusals,
            "daily_series": _daily(igrtd_audit, last), "exports": _exports(directory)}


def _exports(directory: Path) -> list[JsonValue]:
    """The export queue to record-and-verify (daemon/dicom_export.py), if there is one."""
    if not (directory / QUEUE_FILE).is_file():
        return []
    queue = ExportQueue(directory, read_only=True)
    try:
        rows = queue.rows()
    finally:
        queue.close()
    return [{"sop_instance_uid": r.sop_instance_uid, "peer": r.peer_ae, "state": r.shown_state,
             "patient_id": r.patient_id, "failed_attempts": r.attempts,
             "next_attempt_at": r.next_attempt_at if r.state == "pending" else None,
             "last_error": r.last_error, "sent_at": r.sent_at} for r in rows]


def _print(status: JsonObject, out: TextIO) -> None:
    series = status["series"]
    assert isinstance(series, list)
    print(f"{len(series)} series in {status['directory']}", file=out)
    for s in series:
        assert isinstance(s, dict)
        verdict = s.get("volume") or (f"REFUSED: {s['refused']}" if "refused" in s else "")
        print(f"  {s['modality']:<8} {s['patient_id']:<16} {s['instances']:>5}  "
              f"{s['series_uid']}  {verdict}".rstrip(), file=out)
    refusals = status["refusals"]
    assert isinstance(refusals, list)
    print(f"latest refusals ({len(refusals)}):", file=out)
    for r in refusals:
        assert isinstance(r, dict)
        code = f" {r['status']}" if "status" in r else ""
        print(f"  {r['time']}  {r['actor']}{code}  {r['reason']}", file=out)
    daily = status.get("daily_series") or []
    assert isinstance(daily, list)
    if daily:
        print(f"daily series as igrtd judged them ({len(daily)}):", file=out)
    for d in daily:
        assert isinstance(d, dict)
        why = f"  {d['reason']}" if d.get("reason") else ""
        print(f"  {d['time']}  {str(d.get('outcome', '')).upper():<12} "
              f"{d.get('series_uid', '')}{why}", file=out)
    exports = status.get("exports") or []
    assert isinstance(exports, list)
    if exports:
        counts = {k: sum(1 for e in exports if isinstance(e, dict) and e["state"] == k)
                  for k in ("pending", "failing", "sent")}
        print(f"exports to record-and-verify ({len(exports)}): "
              + ", ".join(f"{n} {k}" for k, n in counts.items()), file=out)
    for e in exports:
        assert isinstance(e, dict)
        why = ""
        if e["state"] == "failing":
            why = f"  {e['failed_attempts']} failed attempt(s): {e['last_error']}"
        print(f"  {str(e['state']).upper():<8} {e['peer']:<16} {e['patient_id']:<16} "
              f"{e['sop_instance_uid']}{why}", file=out)


def run_dicom(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point for `igrtctl dicom ...`."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
        if args.command in QUERY_COMMANDS:
            return run_query(args, out=out, err=err)
        if args.last < 0:
            raise UsageError(f"--last {args.last}: must be 0 or more")
        env = os.environ.get("IGRT_DICOM_DIR")
        directory = args.dir or (Path(env) if env else DEFAULT_DICOM_DIR)
        igrtd_audit = args.igrtd_audit or directory.parent / "audit"
        status = _status(directory, args.patient, args.last, igrtd_audit)
    except UsageError as exc:
        print(f"igrtctl dicom: {exc}", file=err)
        return ExitCode.USAGE
    except SystemExit as exc:  # --help, argparse errors
        return int(exc.code or 0)
    except (ArchiveError, AuditError, QueueError) as exc:
        print(f"igrtctl dicom: {exc}", file=err)
        return ExitCode.USAGE
    if args.json:
        print(json.dumps(status, ensure_ascii=False), file=out)
    else:
        _print(status, out)
    return ExitCode.OK
