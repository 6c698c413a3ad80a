"""`make demo MODE=between-beams` (sim/demo_between_beams.py) passes end to end."""

from __future__ import annotations

import json
from pathlib import Path

from sim import demo_between_beams


def test_the_between_beams_demo_corrects_the_drift_with_the_beam_held(tmp_path: Path) -> None:
    assert demo_between_beams.run(tmp_path / "demo", seed=2) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["ok"] is True
    assert report["target_error_after_mm"] <= report["tolerance_mm"]
    assert report["couch_moved_with_beam_hold_released"] is False
    assert [c["outcome"] for c in report["corrections"]] == ["applied"]
