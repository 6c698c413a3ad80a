"""`igrtctl dicom find` and `igrtctl dicom retrieve`: query the clinic's PACS
and retrieve a plan, its planning CT, a series or a study into igrt
(docs/dicom.md, "Query/retrieve from a PACS").

The DICOM network work runs here, in the client, not in igrtd: igrtd's event
loop carries the STOP path, and a PACS that answers slowly must never share
it. igrtctl calls the PACS (the one peer with role `query`, or `--peer`) with
igrt's own AE title from the room configuration and asks it to C-MOVE to
that same title, so what arrives goes through igrt-dicomd's admission,
validation and durable storage like anything pushed. Progress comes from the
PACS's pending C-MOVE responses; what arrived is read from igrt's archive.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import TextIO

from daemon.config import ConfigError, parse_config
from daemon.config_dicom import DicomConfig
from daemon.dicom_query import (
    Pacs,
    QueryConfigError,
    QueryError,
    check_patient_id,
    check_uid,
    query_peer,
)
from daemon.dicom_retrieve import (
    Part,
    PartOutcome,
    Retrieval,
    drawn_on,
    plan_frame_of_reference,
    plan_structure_sets,
)
from daemon.igrtctl.exits import ExitCode, UsageError
from daemon.jsontypes import JsonObject, JsonValue
from drivers.dicom_qr import MoveStatus, QrError, QrUnreachable, QueryRetrieveScu
from imaging.dicom_safe import one_line

QUERY_COMMANDS = ("find", "retrieve")
DEFAULT_CONFIG = Path("/etc/igrt/room.json")
MISSING_SHOWN = 10  # instances named one per line; the rest are counted
MODALITY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def add_query_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help=f"the room configuration (default $IGRT_CONFIG, else "
                             f"{DEFAULT_CONFIG}): igrt's AE title, the PACS, the archive")
    common.add_argument("--peer", metavar="AE", help="the PACS to ask, when several peers have "
                        "role query")
    common.add_argument("--patient", required=True, metavar="ID", help="PatientID, exact")
    common.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="association and per-answer timeout (30 s)")
    common.add_argument("--json", action="store_true")
    f = sub.add_parser("find", parents=[common], help="C-FIND on the PACS: the patient's "
                       "studies or series with their UIDs, modality and counts")
    f.add_argument("--level", choices=("patient", "study", "series"), default="series")
    f.add_argument("--modality", help="only series of this modality (CT, RTPLAN, RTSTRUCT, ...)")
    f.add_argument("--study", metavar="UID", help="only this study's series")
    r = sub.add_parser("retrieve", parents=[common], help="C-MOVE from the PACS to igrt "
                       "(through igrt-dicomd), with progress")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", metavar="SOP_UID", help="an RT Plan by its SOP Instance UID")
    what.add_argument("--series", metavar="UID", help="a series by its Series Instance UID")
    what.add_argument("--study", metavar="UID", help="a whole study")
    r.add_argument("--with-planning-ct", action="store_true",
                   help="with --plan: also the CT series with the plan's frame of reference")


def _config(path: Path | None) -> tuple[DicomConfig, Path]:
    """The room configuration's dicom section and the archive igrt-dicomd keeps."""
    env = os.environ.get("IGRT_CONFIG")
    path = path or (Path(env) if env else DEFAULT_CONFIG)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        config = parse_config(raw, path)
    except ConfigError as exc:
        more = f" (and {len(exc.problems) - 1} more: igrtd --check-config)" \
            if len(exc.problems) > 1 else ""
        raise UsageError(f"{path}: {exc.problems[0] if exc.problems else 'invalid'}{more}") \
            from None
    if config.dicom is None:
        raise QueryConfigError(f"{path}: no dicom section, so no PACS and no AE title to call as")
    return config.dicom, config.dicom.archive_dir(config.state_dir)


def _uid(text: str | None, option: str) -> str:
    if not text:
        return ""
    try:
        return check_uid(text, option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _modality(text: str | None) -> str:
    if text is None:
        return ""
    m = text.strip().upper()
    if not m or len(m) > 16 or not set(m) <= MODALITY_CHARS:
        raise UsageError(f"--modality {text!r}: a DICOM modality such as CT or RTPLAN")
    return m


# ------------------------------------------------------------------ find
def _find(args: argparse.Namespace, pacs: Pacs, out: TextIO) -> int:
    patient = args.patient
    modality = _modality(args.modality)
    study = _uid(args.study, "--study")
    if (modality or study) and args.level != "series":
        raise UsageError("--modality and --study apply to --level series")
    rows: list[JsonValue]
    if args.level == "patient":
        rows = [m.model_dump() for m in pacs.patients(patient)]
    elif args.level == "study":
        rows = [m.model_dump() for m in pacs.studies(patient)]
    elif study:
        rows = [m.model_dump() for m in pacs.series(patient, study, modality=modality)]
    else:
        rows = [m.model_dump() for m in pacs.patient_series(patient, modality=modality)]
    if args.json:
        print(json.dumps({"pacs": pacs.peer.ae_title, "patient_id": patient,
                          "level": args.level, "matches": rows}, ensure_ascii=False), file=out)
        return ExitCode.OK
    print(f"{len(rows)} {args.level} match(es) for patient {patient} on PACS "
          f"{pacs.peer.ae_title}", file=out)
    for row in rows:
        assert isinstance(row, dict)
        print("  " + _match_line(args.level, row), file=out)
    return ExitCode.OK


def _match_line(level: str, m: JsonObject) -> str:
    def n(key: str) -> str:
        return "?" if m.get(key) is None else str(m[key])

    if level == "patient":
        return f"{m['patient_id']}  {m.get('patient_name') or ''}  {n('studies')} studies"
    if level == "study":
        modalities = m.get("modalities") or []
        assert isinstance(modalities, list)
        return (f"study {m['study_uid']}  {m.get('date') or '-'}  "
                f"{'/'.join(str(x) for x in modalities) or '-'}  {n('instances')} instance(s)  "
                f"{m.get('description') or ''}").rstrip()
    frame = f"  FoR {m['frame_of_reference_uid']}" if m.get("frame_of_reference_uid") else ""
    return (f"{m.get('modality') or '?':<8} {n('instances'):>5}  {m['series_uid']}  study "
            f"{m['study_uid']}{frame}  {m.get('description') or ''}").rstrip()


# -------------------------------------------------------------- retrieve
class Progress:
    """C-MOVE progress: one line rewritten on a terminal, plain lines (at most one a
    second, and the last) otherwise, one JSON object per response with --json."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out = out
        self._json = as_json
        self._tty = not as_json and out.isatty()
        self._last = 0.0
        self._width = 0

    def __call__(self, part: Part, s: MoveStatus) -> None:
        done = (s.completed or 0) + (s.failed or 0) + (s.warning or 0)
        total = done + (s.remaining or 0)
        if self._json:
            self._print(json.dumps({"event": "progress", "part": part.label, "uid": part.uid,
                                    "final": not s.pending, "status": f"0x{s.status:04X}",
                                    "completed": s.completed, "failed": s.failed,
                                    "warning": s.warning, "remaining": s.remaining}))
            return
        line = (f"{part.label} {part.uid}: {done}/{total} sub-operations done "
                f"({s.failed or 0} failed, {s.warning or 0} warning)")
        if not s.pending and s.status != 0:
            line = (f"{part.label} {part.uid}: the PACS ended the retrieve with status "
                    f"0x{s.status:04X} ({s.completed or 0} completed, {s.failed or 0} failed, "
                    f"{s.warning or 0} warning)")
        if self._tty:
            self._out.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self._out.flush()
            return
        now = time.monotonic()
        if now - self._last >= 1.0 or not s.pending:
            self._last = now
            self._print(line)

    def end_line(self) -> None:
        """Leave the rewritten terminal line in place before anything else is printed."""
        if self._tty and self._width:
            self._out.write("\n")
            self._width = 0

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def _outcome_json(o: PartOutcome) -> JsonObject:
    return {"part": o.part.label, "uid": o.part.uid, "status": f"0x{o.final.status:04X}",
            "completed": o.final.completed, "failed": o.final.failed,
            "expected": len(o.part.expected),
            "arrived": [i.sop_instance_uid for i in o.arrived],
            "missing": [{"sop_instance_uid": m.sop_instance_uid, "reason": m.reason}
                        for m in o.missing],
            "volume": o.volume, "complete": o.complete}


def _outcome_lines(o: PartOutcome) -> list[str]:
    lines = [f"{o.part.label} {o.part.uid}: {len(o.arrived)} of {len(o.part.expected)} "
             f"instance(s) arrived, {len(o.missing)} failed (PACS final status "
             f"0x{o.final.status:04X})" + (f"; {o.volume}" if o.volume else "")]
    for m in o.missing[:MISSING_SHOWN]:
        lines.append(f"  failed: {m.sop_instance_uid}: {m.reason}")
    if len(o.missing) > MISSING_SHOWN:
        lines.append(f"  ... and {len(o.missing) - MISSING_SHOWN} more")
    return lines


def _retrieve(args: argparse.Namespace, pacs: Pacs, dicom: DicomConfig, archive_dir: Path,
              out: TextIO, err: TextIO) -> int:
    if args.with_planning_ct and not args.plan:
        raise UsageError("--with-planning-ct goes with --plan")
    plan, series, study = (_uid(args.plan, "--plan"), _uid(args.series, "--series"),
                           _uid(args.study, "--study"))
    progress = Progress(out, as_json=args.json)
    retrieval = Retrieval(pacs, patient_id=args.patient, destination=dicom.ae_title,
                          archive_dir=archive_dir, progress=progress)
    outcomes: list[PartOutcome] = []

    def run(part: Part) -> PartOutcome:
        outcome = retrieval.run(part)
        progress.end_line()
        outcomes.append(outcome)
        if not args.json:
            for line in _outcome_lines(outcome):
                print(line, file=out)
        return outcome

    try:
        if plan:
            first = run(retrieval.plan(plan))
            if args.with_planning_ct and first.complete:
                frame = plan_frame_of_reference(first)
                named: frozenset[str] = frozenset()
                for uid in plan_structure_sets(first):  # they say which CT, when several
                    part = retrieval.structure_set(uid)
                    if part is not None:
                        named |= drawn_on(run(part), frame)
                run(retrieval.planning_ct(frame, named=named))
        elif series:
            run(retrieval.series(series))
        elif study:
            run(retrieval.study(study))
    finally:
        progress.end_line()
        if args.json and outcomes:
            print(json.dumps({"event": "done", "pacs": pacs.peer.ae_title,
                              "patient_id": args.patient,
                              "parts": [_outcome_json(o) for o in outcomes],
                              "complete": all(o.complete for o in outcomes)},
                             ensure_ascii=False), file=out)
    failed = [o for o in outcomes if not o.complete]
    if failed:
        o = failed[0]
        names = ", ".join(m.sop_instance_uid for m in o.missing[:3])
        more = f" and {len(o.missing) - 3} more" if len(o.missing) > 3 else ""
        print(f"igrtctl dicom: retrieve incomplete: {len(o.missing)} of {len(o.part.expected)} "
              f"instance(s) of {o.part.label} {o.part.uid} did not arrive ({names}{more}): "
              f"{one_line(o.missing[0].reason, 160) if o.missing else 'nothing arrived'}; "
              "see igrtctl dicom status", file=err)
        return ExitCode.REFUSED
    if not args.json:
        summary = "; ".join(f"{o.part.label} {o.part.uid} ({len(o.arrived)} instance(s))"
                            for o in outcomes)
        print(f"arrived in igrt for patient {args.patient} from PACS {pacs.peer.ae_title}: "
              f"{summary}", file=out)
    return ExitCode.OK


def run_query(args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """`igrtctl dicom find|retrieve`, parsed: an ExitCode, errors one line on `err`."""
    # pynetdicom logs its own failures (connection refused, aborts) with tracebacks;
    # each is reported here once, in one line.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.getLogger("igrt.dicom").setLevel(logging.CRITICAL)
    try:
        try:
            patient = check_patient_id(args.patient)
            if not 0.5 <= args.timeout <= 600:
                raise UsageError(f"--timeout {args.timeout:g}: 0.5 to 600 s")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        args.patient = patient
        dicom, archive_dir = _config(args.config)
        peer = query_peer(dicom, args.peer)
        pacs = Pacs(QueryRetrieveScu(ae_title=dicom.ae_title, peer=peer,
                                     timeout_s=args.timeout), peer)
        if args.command == "find":
            return _find(args, pacs, out)
        return _retrieve(args, pacs, dicom, archive_dir, out, err)
    except (UsageError, QueryConfigError) as exc:
        print(f"igrtctl dicom: {one_line(str(exc), 400)}", file=err)
        return ExitCode.USAGE
    except QrUnreachable as exc:
        print(f"igrtctl dicom: {one_line(str(exc), 400)}", file=err)
        return ExitCode.UNREACHABLE
    except (QrError, QueryError) as exc:
        print(f"igrtctl dicom: {one_line(str(exc), 400)}", file=err)
        return ExitCode.REFUSED
