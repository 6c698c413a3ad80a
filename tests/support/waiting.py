"""Waiting for a condition in a test that drives real processes (blocking, no event loop)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(pred: Callable[[], T], timeout: float = 5.0, what: str = "condition",
          period: float = 0.02) -> T:
    """The first truthy value of `pred()`, polled every `period` s; AssertionError naming
    `what` when none comes within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(period)
