"""`igrtctl qa report`: the HTML report of the daily QA results (docs/qa.md).

The results come from igrtd (qa_results) or, with --results, from a file saved
by `igrtctl --json qa results`; daemon.qa_report draws the page and the charts.
Named qa_report_tool so it is not mistaken for daemon.qa_report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.igrtctl.exits import ExitCode, UsageError, err
from daemon.igrtctl.qa_link import QaStopped, call, reading
from daemon.jsontypes import JsonObject, as_list, as_object

if TYPE_CHECKING:
    from daemon.igrtctl.links import RoomLink


async def report(a: argparse.Namespace, link: RoomLink) -> int:
    try:
        reply = await call(link, "qa_results", kind="daily", limit=a.limit)
    except QaStopped as exc:
        err(str(exc))
        return exc.code
    with reading("qa_results"):
        results = [as_object(r, "results[]") for r in as_list(reply.get("results"), "results")]
    return _write(a, results)


def report_from_file(a: argparse.Namespace) -> int:
    """--results FILE: the report from saved results, igrtd not asked."""
    try:
        raw = json.loads(Path(a.results).read_text())
    except OSError as exc:
        raise UsageError(f"--results {a.results}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--results {a.results}: not JSON: {exc}") from None
    listed = raw.get("results") if isinstance(raw, dict) else raw
    if not isinstance(listed, list) or not all(isinstance(r, dict) for r in listed):
        raise UsageError(f"--results {a.results}: expected a list of results or "
                         "{\"results\": [...]}")
    listed = [r for r in listed if r.get("kind", "daily") == "daily"][:a.limit]
    return _write(a, listed)


def _write(a: argparse.Namespace, results: list[JsonObject]) -> int:
    """index.html and the trend charts into --out; REFUSED when no run completed."""
    from daemon.qa_report import write_report

    if not any(r.get("aborted") is not True for r in results):
        err(f"no completed daily QA results to report ({len(results)} aborted)")
        return ExitCode.REFUSED
    try:
        files = write_report(results, Path(a.out))
    except ValueError as exc:
        raise UsageError(f"QA results: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--out {a.out}: {exc.strerror or exc}") from None
    if a.json:
        print(json.dumps({"html": str(files.html), "results": files.results,
                          "failures": files.failures,
                          "charts": {k: str(v) for k, v in files.charts.items()}}, indent=2))
    else:
        print(f"{files.html}: {files.results} results, {files.failures} failed checks, "
              f"{len(files.charts)} trend charts")
    return ExitCode.OK
