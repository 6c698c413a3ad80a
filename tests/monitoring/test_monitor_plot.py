"""The deviation-versus-time PNG used by the monitor demo report."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from imaging.monitor_plot import deviation_plot


def test_deviation_plot_writes_a_png_with_hold_intervals_shaded(tmp_path: Path) -> None:
    times = [0.1 * k for k in range(50)]
    devs: list[float | None] = [1.0 if k < 20 else 4.0 for k in range(50)]
    devs[30] = None  # a frame without an estimate is a gap, not a zero
    png = deviation_plot(tmp_path / "dev.png", times, devs, 3.0, [(2.2, 4.9)])
    img = Image.open(png).convert("RGB")
    assert img.size == (1000, 420)
    assert (255, 215, 215) in {img.getpixel((x, 300)) for x in range(600, 900)}  # shaded hold
