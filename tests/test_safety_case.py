"""docs/safety-case.md is a claim about this test suite: it must stay true.

Every hazard row names the tests that prove its mitigation as
`tests/path.py::test_name` (or `tests/path.py::Class::test_name`). These tests
fail when a row names a test that does not exist, when a hazard row names no
test at all, or when a hazard the product must cover is missing from the case.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "docs" / "safety-case.md"
NODE_ID = re.compile(r"(tests/[\w/]+\.py)::([\w:]+)")

# Hazards the safety case must always address (DEVELOPERS.md, issue 11 item 14).
REQUIRED_HAZARDS = (
    "H-DIRECTION", "H-PATIENT", "H-STALE", "H-REPLAY", "H-DOUBLE", "H-CLIP",
    "H-COMMS", "H-RUNAWAY", "H-JUMP", "H-IMPERSONATION", "H-MOVED", "H-INPUT-KILL",
    "H-PLC-FAULT", "H-PLC-VALUE", "H-TRAVEL", "H-INTERLOCK", "H-HOLD", "H-CONFIG",
    "H-FILES", "H-TOKEN-TIME",
)


def _hazard_rows() -> list[tuple[str, str]]:
    """(hazard id, whole row) for every table row whose first cell is an H-... id."""
    rows = []
    for line in CASE.read_text().splitlines():
        m = re.match(r"\|\s*\**(H-[A-Z0-9-]+)\**\s*\|", line)
        if m:
            rows.append((m.group(1), line))
    return rows


@cache
def _defined(path: str) -> frozenset[str]:
    """Test names defined in a file: `name` and `Class::name`."""
    tree = ast.parse((ROOT / path).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}::{item.name}")
    return frozenset(names)


def test_every_required_hazard_has_a_row() -> None:
    present = {hid for hid, _ in _hazard_rows()}
    missing = [h for h in REQUIRED_HAZARDS if h not in present]
    assert not missing, f"docs/safety-case.md has no row for {missing}"


def test_every_hazard_row_names_at_least_one_test() -> None:
    bare = [hid for hid, row in _hazard_rows() if not NODE_ID.search(row)]
    assert not bare, f"hazards without a proving test: {bare}"


def test_every_test_named_in_the_safety_case_exists() -> None:
    missing = []
    for hid, row in _hazard_rows():
        for path, name in NODE_ID.findall(row):
            if not (ROOT / path).is_file() or name not in _defined(path):
                missing.append(f"{hid}: {path}::{name}")
    assert not missing, "safety case names tests that do not exist:\n" + "\n".join(missing)


def test_hazard_ids_are_unique() -> None:
    ids = [hid for hid, _ in _hazard_rows()]
    assert len(ids) == len(set(ids)), f"duplicate hazard ids: {sorted(ids)}"
