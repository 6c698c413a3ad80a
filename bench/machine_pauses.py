"""Pauses of the machine itself, watched beside a benchmark: the baseline of issue 13
("interleaved with a baseline in the same run where the machine is noisy").

    python -m bench.machine_pauses OUT_FILE [--min-ms 5]   # until SIGTERM

A shared two-core CI machine under load stops running its programs now and
then: traced beside the daily QA tests, igrtd's loop and an independent
sampler process stopped for the same 27-38 ms at the same instants, every few
seconds (docs/integration-testing.md, "Machine pauses"). A figure whose
samples last ~5 ms takes such a pause into about one sample in a hundred,
which is its p99 whatever the software does.

`PauseWatch` runs this module as a child process at the highest priority it
may take (nice -20 as root, as in CI): it sleeps 2 ms again and again and
writes each wake-up that came `min_ms` or more late as `start end` (monotonic
seconds, the clock igrtd, the simulators and the bench share) to OUT_FILE. At
nice -20 on an otherwise quiet machine nothing of the benchmark delays it, so
a late wake-up is a pause of the machine, not contention. A benchmark then
reports its figure twice: over every sample, and over the samples during which
no pause was seen (`split_by_pauses`), with both counts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Self

PERIOD_S = 0.002
MIN_PAUSE_MS = 5.0
REPO = Path(__file__).resolve().parents[1]


class PauseWatch:
    """The watcher as a child process for the length of a `with` block."""

    def __init__(self, directory: Path, min_ms: float = MIN_PAUSE_MS) -> None:
        self.path = directory / "machine-pauses.txt"
        self.min_ms = min_ms
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.path.write_text("")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.machine_pauses", str(self.path),
             "--min-ms", str(self.min_ms)], cwd=REPO)
        time.sleep(0.2)  # started and sleeping before the first sample
        return self

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the pause watcher is not running")
        return self._proc.pid

    def pauses(self) -> list[tuple[float, float]]:
        """(start, end) of every pause seen so far, monotonic seconds."""
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((float(parts[0]), float(parts[1])))
        return out


def split_by_pauses(windows: Sequence[tuple[float, float]],
                    pauses: Sequence[tuple[float, float]]) -> list[bool]:
    """For each sample's (start, end) window: True where a pause overlaps it."""
    return [any(p0 < end and p1 > start for p0, p1 in pauses) for start, end in windows]


def _watch(out_file: Path, min_s: float) -> None:
    try:
        os.nice(-20)
    except OSError:  # not root: the ordinary priority, which contention can delay too
        pass
    stop = False

    def _on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_term)
    with out_file.open("a", buffering=1) as out:
        last = time.monotonic()
        while not stop:
            time.sleep(PERIOD_S)
            now = time.monotonic()
            if now - last - PERIOD_S >= min_s:
                out.write(f"{last + PERIOD_S:.6f} {now:.6f}\n")
            last = now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.machine_pauses", description=__doc__)
    p.add_argument("out_file", type=Path)
    p.add_argument("--min-ms", type=float, default=MIN_PAUSE_MS)
    args = p.parse_args(argv)
    _watch(args.out_file, args.min_ms / 1000.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
