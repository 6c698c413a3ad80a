"""Bench figures are honest about their samples (issue 13 item 2): every key
with `_p99` in bench/results.json (and bench/results-long.json when present)
comes with `<name>_samples` >= 1000, where `<name>` is the key up to `_p99`.
Reads the written results; runs no bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
RESULTS = BENCH / "results.json"
# `make bench-long` output, checked too when someone has produced it.
LONG_RESULTS = BENCH / "results-long.json"
P99_MIN_SAMPLES = 1000


def unsupported_p99_keys(results: dict[str, Any]) -> list[str]:
    bad = []
    for key in results:
        if "_p99" not in key:
            continue
        n = results.get(key[: key.index("_p99")] + "_samples")
        if not isinstance(n, (int, float)) or n < P99_MIN_SAMPLES:
            bad.append(f"{key} (samples: {n})")
    return bad


def test_checker_catches_a_p99_from_few_samples() -> None:
    assert unsupported_p99_keys({"x_p99_ms": 1.0, "x_samples": 80.0}) == ["x_p99_ms (samples: 80.0)"]
    assert unsupported_p99_keys({"x_p99_ms": 1.0}) == ["x_p99_ms (samples: None)"]
    assert unsupported_p99_keys({"x_p99_ms": 1.0, "x_samples": 1000.0, "y_p90_ms": 2.0}) == []


def test_bench_drr_key_is_full_resolution() -> None:
    # drr_ms is the one-ray-per-pixel DRR; the coarse grid has its own key.
    results = json.loads(RESULTS.read_text())
    assert "drr_full_rays_ms" not in results


@pytest.mark.parametrize("path", [RESULTS, LONG_RESULTS], ids=lambda p: f"bench/{p.name}")
def test_results_have_enough_samples_for_each_p99(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} not produced")
    assert unsupported_p99_keys(json.loads(path.read_text())) == []


# The browser console's figures (issue 15 item 9, bench/console_browser_bench.py): each
# tail figure with its sample count; the p99 ones in the long run's results.
CONSOLE_TAILS = ("console_stop_click_to_stop_frame", "console_state_to_screen")


@pytest.mark.parametrize("path", [RESULTS, LONG_RESULTS], ids=lambda p: f"bench/{p.name}")
def test_results_have_the_browser_console_figures(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} not produced")
    results = json.loads(path.read_text())
    missing = [k for k in ("console_first_paint_ms", *(f"{n}_samples" for n in CONSOLE_TAILS))
               if k not in results]
    assert not missing, f"{path.name} lacks {missing}: run python -m bench.run"
    for name in CONSOLE_TAILS:
        tails = [k for k in results if k.startswith(f"{name}_p9") and k.endswith("_ms")]
        assert tails, f"{path.name}: no p90/p99 figure of {name}"
        if path == LONG_RESULTS:
            assert f"{name}_p99_ms" in results, f"{name}_p99_ms missing from the long run"
