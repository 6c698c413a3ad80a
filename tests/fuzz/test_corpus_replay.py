"""Replays the crash corpus (tests/fuzz/corpus/<target>/*) on every run.

The corpus holds the exact inputs of past defects (issue 11) and every
failing input `make fuzz` finds; each must now hold its target's property.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .targets import CORPUS, TARGETS, corpus_files

CASES = [(name, path) for name in sorted(TARGETS) for path in corpus_files(name)]


def test_corpus_has_files_for_every_target() -> None:
    assert {name for name, _ in CASES} == set(TARGETS)


def test_corpus_holds_no_file_of_an_unknown_target() -> None:
    assert {d.name for d in CORPUS.iterdir() if d.is_dir()} <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES,
                         ids=[f"{n}/{p.name}" for n, p in CASES])
def test_corpus_input_holds_its_targets_property(target: str, path: Path) -> None:
    t = TARGETS[target]
    t.check(t.from_bytes(path.read_bytes()))
