"""`make bench`: run every benchmark and write one flat JSON object.

Each module in BENCHES exposes `run() -> dict[str, float]` with units in the
key names; tail figures come from bench.stats.tail_figures, which names a
percentile no higher than its sample count supports and adds `<name>_samples`.
`--long` (make bench-long) gives every p99 figure its 1,000 samples. A
benchmark that fails is reported as `<module>_error` (text) and the others
still run, so one broken figure does not hide the rest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.stats import LONG_ENV, long_run

BENCHES = [
    "bench.plan_bench",
    "bench.collision_bench",
    "bench.couch_bench",
    "bench.registration_bench",
    "bench.plc_bench",
    "bench.supervision_bench",
    "bench.idle_bench",
    "bench.console_bench",
    "bench.confirm_bench",
    "bench.durability_bench",
    "bench.recovery_bench",
    "bench.imaging2d4d_bench",
    "bench.monitor_bench",
    "bench.dicom_export_bench",
    "bench.dicom_intake_bench",
    "bench.console_browser_bench",
    "bench.qa_bench",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run")
    ap.add_argument("--out", type=Path, default=Path("bench/results.json"))
    ap.add_argument("--only", nargs="*", help="module names (e.g. plan_bench)")
    ap.add_argument("--long", action="store_true",
                    help="take >= 1,000 samples for every p99 figure (make bench-long; "
                         "about 2 hours)")
    a = ap.parse_args(argv)
    if a.long:
        # Read by each module through bench.stats.long_run(), also when one is run alone.
        os.environ[LONG_ENV] = "1"
    results: dict[str, Any] = {}
    for name in BENCHES:
        short = name.rsplit(".", 1)[1]
        if a.only and short not in a.only:
            continue
        t0 = time.monotonic()
        print(f"bench: {short} ...", flush=True)
        try:
            mod = importlib.import_module(name)
            figures = mod.run()
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            results[f"{short}_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            continue
        except Exception as exc:  # noqa: BLE001 - keep going: the failure goes in the results
            results[f"{short}_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            continue
        for k, v in figures.items():
            results[k] = v
            print(f"  {k} = {v}", flush=True)
        print(f"  ({time.monotonic() - t0:.1f} s)", flush=True)
    results["machine_cpus"] = os.cpu_count()
    results["bench_long"] = float(long_run())
    results["python_version"] = platform.python_version()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {a.out}")
    return 0 if not any(k.endswith("_error") for k in results) else 1


if __name__ == "__main__":
    sys.exit(main())
