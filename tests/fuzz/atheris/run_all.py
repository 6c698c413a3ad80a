"""Runs every atheris harness for a while (`make fuzz`): one libFuzzer process per
target, seeded from tests/fuzz/corpus/<target>/, working corpus in out/fuzz/<target>/,
crashing inputs written to tests/fuzz/corpus/<target>/crash-* (replayed by the test
suite from then on). Without atheris installed it says so and does nothing.

    python tests/fuzz/atheris/run_all.py [--seconds 60] [TARGET ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HARNESS = Path(__file__).resolve().parent / "fuzz_target.py"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
TARGETS = ["strict_json", "mqtt_command", "local_line", "config", "reg_file", "couch_frames",
           "plc_registers"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60, help="per target")
    ap.add_argument("targets", nargs="*", default=TARGETS)
    args = ap.parse_args()
    if importlib.util.find_spec("atheris") is None:
        print("atheris is not installed (pip install -e '.[fuzz]'); "
              "coverage-guided fuzzing skipped, hypothesis fuzzing still ran")
        return 0
    failed = []
    for target in args.targets:
        work = ROOT / "out" / "fuzz" / target
        work.mkdir(parents=True, exist_ok=True)
        seeds = CORPUS / target
        print(f"== atheris {target}: {args.seconds} s", flush=True)
        rc = subprocess.call(
            [sys.executable, str(HARNESS), target, str(work), str(seeds),
             f"-max_total_time={args.seconds}", f"-artifact_prefix={seeds}/crash-",
             "-rss_limit_mb=4096", "-timeout=30", "-print_final_stats=1"],
            cwd=ROOT,
        )
        if rc != 0:
            failed.append(target)
    if failed:
        print(f"atheris found failing inputs for: {', '.join(failed)} "
              f"(see tests/fuzz/corpus/<target>/crash-*)")
        return 1
    print("atheris: no failing input found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
