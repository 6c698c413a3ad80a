"""Hypothesis settings profiles for the fuzz tests, and corpus capture.

Profiles (environment variable IGRT_FUZZ_PROFILE):

* `ci` (default): a bounded run inside `make test` - the whole tests/fuzz
  directory adds well under a minute;
* `fuzz`: `make fuzz`, a hundred times more examples per target;
* `dev`: a handful of examples, for editing the fuzz tests themselves.

The profiles apply to the fuzz tests only (each test is decorated with
`fuzz_settings`), so loading one never changes other hypothesis tests.

Corpus capture: with IGRT_FUZZ_SAVE_CORPUS=1 (set by `make fuzz`), the
minimal failing input hypothesis ends up with is written to
tests/fuzz/corpus/<target>/, where `test_corpus_replay.py` replays it on every
run from then on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument

from .targets import CORPUS, TARGETS

PROFILE_ENV = "IGRT_FUZZ_PROFILE"
SAVE_ENV = "IGRT_FUZZ_SAVE_CORPUS"

_COMMON: dict[str, Any] = {
    "deadline": None,  # a loaded 2-core machine makes per-example timing meaningless
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.filter_too_much],
    "print_blob": True,
}
settings.register_profile("dev", max_examples=10, database=None, **_COMMON)
# The suite is repeatable: the same examples on every run (`make fuzz` explores).
settings.register_profile("ci", max_examples=50, database=None, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=6000, **_COMMON)

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in ("dev", "ci", "fuzz"):
    raise RuntimeError(f"{PROFILE_ENV}={PROFILE!r}: use dev, ci or fuzz")
_BASE = settings.get_profile(PROFILE)


def fuzz_settings(weight: float = 1.0, cap: int | None = None) -> settings:
    """The selected profile, with `weight` times its examples (slow targets use < 1),
    at most `cap` (tests that drive a real igrtd)."""
    n = max(3, int(_BASE.max_examples * weight))
    return settings(_BASE, max_examples=min(n, cap) if cap else n)


def _is_final_example() -> bool:
    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:  # outside hypothesis (corpus replay): never save
        return False


def save_to_corpus(target: str, data: bytes) -> str | None:
    """Write a failing input to the corpus (named by its hash, so never twice)."""
    name = hashlib.sha256(data).hexdigest()[:16]
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"found-{name}{TARGETS[target].suffix}"
    if not path.exists():
        path.write_bytes(data)
    return str(path)


def run_target(target: str, value: Any, check: Callable[[Any], None] | None = None) -> None:
    """Run a target's property on one input; keep the input if it is a final failure."""
    t = TARGETS[target]
    try:
        (check or t.check)(value)
    except BaseException:
        if os.environ.get(SAVE_ENV) == "1" and _is_final_example():
            save_to_corpus(target, t.to_bytes(value))
        raise
