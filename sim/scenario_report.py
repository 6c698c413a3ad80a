"""Scenario results as people and CI read them: a pass/fail table and JUnit XML
(one testsuite per scenario file, one testcase per expectation, a failure
message with what was expected and what was measured)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from sim.scenario_checks import ScenarioResult

_HEAD = ("scenario", "at s", "expectation", "measured", "verdict")


def table(results: Sequence[ScenarioResult]) -> str:
    """One row per expectation; failures are followed by their message."""
    rows: list[tuple[str, ...]] = []
    notes: dict[int, str] = {}
    for res in results:
        for r in res.rows:
            rows.append((r.scenario, f"{r.at:.2f}", r.what, r.measured,
                         "pass" if r.passed else "FAIL"))
            if not r.passed and r.message:
                notes[len(rows) - 1] = r.message
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(_HEAD)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(_HEAD), line(["-" * w for w in widths])]
    for i, row in enumerate(rows):
        out.append(line(row))
        if i in notes:
            out.append(f"    -> {notes[i]}")
    failed = sum(not r.passed for res in results for r in res.rows)
    bad = sum(not res.passed for res in results)
    secs = sum(res.seconds for res in results)
    out.append(f"{len(results)} scenario(s), {len(rows)} expectation(s), {failed} failed "
               f"({bad} scenario(s) failing), {secs:.1f} s")
    return "\n".join(out)


def junit(results: Sequence[ScenarioResult]) -> ET.ElementTree:
    suites = ET.Element("testsuites", name="igrt-sim scenarios")
    for res in results:
        failures = sum(not r.passed for r in res.rows)
        suite = ET.SubElement(suites, "testsuite", name=res.name, file=res.path,
                              tests=str(len(res.rows)), failures=str(failures), errors="0",
                              time=f"{res.seconds:.3f}")
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="hazard", value=res.hazard)
        for r in res.rows:
            case = ET.SubElement(suite, "testcase", classname=Path(res.path).stem,
                                 name=f"at {r.at:.2f} s: {r.what}")
            ET.SubElement(case, "system-out").text = f"measured: {r.measured}"
            if not r.passed:
                fail = ET.SubElement(case, "failure", message=r.message or r.what,
                                     type="ExpectationFailed")
                fail.text = f"expected: {r.what}\nmeasured: {r.measured}\n{r.message}"
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    return tree


def write_junit(results: Sequence[ScenarioResult], path: Path) -> None:
    junit(results).write(path, encoding="utf-8", xml_declaration=True)
