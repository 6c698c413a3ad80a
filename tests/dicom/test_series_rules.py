"""Whether a CT series' slices make one regular volume (imaging/dicom_series.py):
missing, duplicate, tilted, oblique or mixed slices are refused, naming the slice."""

from __future__ import annotations

import pytest

from imaging.dicom_series import SeriesRefused, SliceGeometry, check_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _slice(i: int, z: float, *, x: float = 0.0,
           orientation: tuple[float, ...] = AXIAL, rows: int = 64,
           spacing: tuple[float, float] = (1.0, 1.0)) -> SliceGeometry:
    return SliceGeometry(f"1.2.3.{i}", (x, 0.0, z), orientation, spacing, rows, 64)  # type: ignore[arg-type]


def _series(zs: list[float]) -> list[SliceGeometry]:
    return [_slice(i, z) for i, z in enumerate(zs)]


def test_a_regular_series_is_ordered_along_its_normal() -> None:
    geo = check_series(_series([5.0, 0.0, 2.5, 7.5]))
    assert geo.slices == ("1.2.3.1", "1.2.3.2", "1.2.3.0", "1.2.3.3")
    assert geo.spacing_mm == pytest.approx(2.5)


def test_a_missing_slice_is_refused_naming_the_slice_after_the_gap() -> None:
    with pytest.raises(SeriesRefused, match=r"1\.2\.3\.2 is 5\.000 mm .* 1 slice\(s\) missing"):
        check_series(_series([0.0, 2.5, 7.5, 10.0]))


def test_a_duplicate_position_is_refused() -> None:
    with pytest.raises(SeriesRefused, match="duplicate slice"):
        check_series(_series([0.0, 2.5, 2.5, 5.0]))


def test_non_uniform_spacing_is_refused() -> None:
    with pytest.raises(SeriesRefused, match="non-uniform spacing"):
        check_series(_series([0.0, 2.5, 5.0, 8.0]))


def test_gantry_tilt_is_refused() -> None:
    tilted = [_slice(i, 2.5 * i, x=0.3 * i) for i in range(4)]
    with pytest.raises(SeriesRefused, match="off the slice normal"):
        check_series(tilted)


def test_an_oblique_orientation_is_refused() -> None:
    c, s = 0.8660254, 0.5
    oblique = [_slice(i, 2.5 * i, orientation=(c, s, 0.0, -s, c, 0.0)) for i in range(3)]
    with pytest.raises(SeriesRefused, match="oblique orientation"):
        check_series(oblique)


def test_mixed_matrices_are_refused() -> None:
    slices = _series([0.0, 2.5, 5.0])
    slices[1] = _slice(1, 2.5, rows=32)
    with pytest.raises(SeriesRefused, match="1.2.3.1 is 32x64"):
        check_series(slices)


def test_a_single_slice_is_not_a_volume() -> None:
    with pytest.raises(SeriesRefused, match="at least 2 slices"):
        check_series(_series([0.0]))


def test_the_acquisition_time_is_read_with_its_fraction_and_offset() -> None:
    import datetime as dt

    from pydicom.dataset import Dataset

    from imaging.dicom_series import acquisition_time

    ds = Dataset()
    ds.AcquisitionDateTime = "20261207031500.5+0100"
    assert acquisition_time(ds) == dt.datetime(2026, 12, 7, 2, 15, 0, 500000,
                                               tzinfo=dt.UTC).timestamp()
    ds = Dataset()
    ds.AcquisitionDate, ds.AcquisitionTime = "20261207", "031500.25"
    assert acquisition_time(ds) == dt.datetime(2026, 12, 7, 3, 15, 0, 250000).timestamp()


def test_a_header_without_an_acquisition_time_says_none() -> None:
    from pydicom.dataset import Dataset

    from imaging.dicom_series import acquisition_time

    assert acquisition_time(Dataset()) is None
