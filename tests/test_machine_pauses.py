"""The machine-pause watcher that benchmarks run beside their samples
(bench/machine_pauses.py): it records a stretch in which it was not run, and a
sample counts as paused only when such a stretch overlaps its window."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bench.machine_pauses import PauseWatch, split_by_pauses


def test_a_sample_is_paused_only_where_a_pause_overlaps_its_window() -> None:
    pauses = [(10.0, 10.03)]
    windows = [(9.9, 9.95), (9.99, 10.001), (10.02, 10.025), (10.029, 10.04), (10.03, 10.04)]
    assert split_by_pauses(windows, pauses) == [False, True, True, True, False]


def test_no_pause_leaves_every_sample_unpaused() -> None:
    assert split_by_pauses([(1.0, 1.005), (2.0, 2.005)], []) == [False, False]


def test_the_watcher_records_a_stretch_in_which_it_was_not_run(tmp_path: Path) -> None:
    with PauseWatch(tmp_path) as watch:
        pid = watch.pid
        os.kill(pid, signal.SIGSTOP)  # as the machine pausing would: it is not run at all
        stopped = time.monotonic()
        time.sleep(0.08)
        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while not watch.pauses() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = watch.pauses()
    assert any(p0 <= stopped + 0.01 and p1 - p0 >= 0.07 for p0, p1 in seen), seen
