"""Percentile figures that cannot claim more than their samples support.

A p99 from 80 samples is the second-largest sample, not a 99th percentile:
`tail_figures` writes a `_p99_` key only from at least P99_MIN_SAMPLES samples,
a `_p90_` key from at least P90_MIN_SAMPLES, and always `_p50_`, `_max_` and
`<name>_samples`, so every tail figure carries its sample count.

`long_run()` is true under `make bench-long` (IGRT_BENCH_LONG=1, or
`python -m bench.run --long`): each module then takes enough samples for its
p99 figures; `make bench` keeps the short runs and reports p90/max instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

P99_MIN_SAMPLES = 1000
P90_MIN_SAMPLES = 100
LONG_ENV = "IGRT_BENCH_LONG"


def long_run() -> bool:
    return os.environ.get(LONG_ENV, "") not in ("", "0")


def samples(short: int, long: int = P99_MIN_SAMPLES) -> int:
    """The sample count for this mode: `short` under `make bench`, `long` under bench-long."""
    return long if long_run() else short


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): a value that was actually measured."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def tail_figures(name: str, unit: str, values: Sequence[float], *,
                 with_max: bool = True) -> dict[str, float]:
    """`{name}_p50_{unit}`, the highest percentile the count supports, `{name}_max_{unit}`
    and `{name}_samples`."""
    n = len(values)
    if n == 0:
        raise ValueError(f"{name}: no samples")
    out = {f"{name}_p50_{unit}": percentile(values, 0.50)}
    if n >= P99_MIN_SAMPLES:
        out[f"{name}_p99_{unit}"] = percentile(values, 0.99)
    elif n >= P90_MIN_SAMPLES:
        out[f"{name}_p90_{unit}"] = percentile(values, 0.90)
    if with_max:
        out[f"{name}_max_{unit}"] = max(values)
    out[f"{name}_samples"] = float(n)
    return out
