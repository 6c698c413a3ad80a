"""Review images for the browser console (imaging/review_slices.py): the planes a
therapist accepts a registration on, as int16 HU, and the messages that carry them."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import SimpleITK as sitk

from daemon.console.schemas import ReviewImageMessage, ReviewMetaMessage
from imaging.review_messages import IMAGES, NO_DATA, PLANES, ReviewRequest
from imaging.review_slices import ReviewSlices, encode_review, review_slices

ISO = (4.0, -6.0, 10.0)
SHIFT = (6.0, -4.0, 8.0)  # where the anatomy lies in the daily image, relative to the plan
CENTRE = 109.5  # (220 - 1) / 2: the isocentre lies between the two middle pixels

Vec = tuple[float, float, float]


def phantom(shift: Vec = (0.0, 0.0, 0.0), scale: float = 1.0, offset: float = 0.0,
            marker: Vec | None = None, corner: float | None = None) -> sitk.Image:
    """200 x 200 x 160 mm at 2 mm, centred on (0, 0, 0) (smaller than the 220 mm review
    planes). `shift`: where the anatomy lies, moved by that much (mm); `scale` and
    `offset`: a CBCT-like value scale; `marker`: a 5 mm bright sphere there; `corner`:
    the value of the first voxel."""
    n, sp = (100, 100, 80), 2.0
    z, y, x = np.mgrid[0:n[2], 0:n[1], 0:n[0]].astype(float)
    org = np.array([-(n[0] - 1) * sp / 2, -(n[1] - 1) * sp / 2, -(n[2] - 1) * sp / 2])
    xx = org[0] + x * sp - shift[0]
    yy = org[1] + y * sp - shift[1]
    zz = org[2] + z * sp - shift[2]
    a = np.full(xx.shape, -1000.0)
    body = (xx / 80) ** 2 + (yy / 60) ** 2 + (zz / 70) ** 2 < 1
    a[body] = 40 + 0.5 * xx[body]
    a[(xx - 30) ** 2 + (yy - 10) ** 2 + (zz + 20) ** 2 < 15 ** 2] = 800
    a[(xx + 25) ** 2 + (yy + 20) ** 2 + (zz - 25) ** 2 < 10 ** 2] = -500
    a[(xx - 5) ** 2 + (yy + 35) ** 2 + (zz - 40) ** 2 < 8 ** 2] = 400
    if marker is not None:
        mx, my, mz = marker
        a[(xx - mx) ** 2 + (yy - my) ** 2 + (zz - mz) ** 2 < 5 ** 2] = 3000
    if corner is not None:
        a[0, 0, 0] = corner
    img = sitk.GetImageFromArray((a * scale + offset).astype(np.float32))
    img.SetSpacing((sp, sp, sp))
    img.SetOrigin(tuple(float(v) for v in org))
    return img


def shift_matrix(shift: Vec) -> np.ndarray:
    """The fixed -> moving registration of `phantom(shift)` to `phantom()`: a planning
    point p lies at p + shift in the daily image."""
    m = np.eye(4)
    m[:3, 3] = shift
    return m


@pytest.fixture(scope="module")
def review() -> ReviewSlices:
    fixed = phantom()
    daily = phantom(SHIFT, scale=0.9, offset=30.0)  # a CBCT's own HU scale
    return review_slices(fixed, daily, shift_matrix(SHIFT), ISO)


def test_nine_images_of_220_by_220_int16_at_1_mm(review: ReviewSlices) -> None:
    assert set(review.images) == {(p, i) for p in PLANES for i in IMAGES}
    for a in review.images.values():
        assert a.shape == (220, 220) and a.dtype == np.int16
    assert (review.rows, review.cols, review.pixel_mm) == (220, 220, 1.0)
    assert review.iso_mm == ISO
    assert review.window_width > 0


def test_the_registered_daily_image_matches_the_plan_where_the_acquired_one_does_not(
        review: ReviewSlices) -> None:
    for p in PLANES:
        f = review.images[(p, "fixed")].astype(float)
        before = review.images[(p, "moving_before")].astype(float)
        after = review.images[(p, "moving_after")].astype(float)
        both = (f != NO_DATA) & (before != NO_DATA) & (after != NO_DATA)
        assert both.sum() > 10_000, p
        # On the planning scale: the daily image's 0.9 * HU + 30 is mapped back.
        assert np.median(np.abs(after - f)[both]) <= 2, p
        assert np.mean(np.abs(after - f)[both]) < 10, p
        assert np.mean(np.abs(before - f)[both]) > 40, p


def _centroid(a: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(a > 2000)
    assert rows.size, "marker not in the plane"
    return float(rows.mean()), float(cols.mean())


def test_the_isocentre_is_the_centre_pixel_and_the_planes_are_the_radiological_way_up() -> None:
    def at(marker: tuple[float, float, float], plane: str) -> tuple[float, float]:
        fixed = phantom(marker=marker)
        r = review_slices(fixed, fixed, np.eye(4), ISO)
        return _centroid(r.images[(plane, "fixed")])

    x, y, z = ISO
    for p in PLANES:
        assert at(ISO, p) == pytest.approx((CENTRE, CENTRE), abs=0.01), p
    # Axial from the feet: patient left (+x) on the viewer's right, posterior (+y) down.
    assert at((x + 20, y, z), "axial") == pytest.approx((CENTRE, CENTRE + 20), abs=0.01)
    assert at((x, y + 15, z), "axial") == pytest.approx((CENTRE + 15, CENTRE), abs=0.01)
    # Coronal from the front: superior (+z) up.
    assert at((x + 20, y, z + 30), "coronal") == pytest.approx((CENTRE - 30, CENTRE + 20),
                                                               abs=0.01)
    # Sagittal from the patient's left: anterior (-y) on the viewer's left.
    assert at((x, y + 15, z + 30), "sagittal") == pytest.approx((CENTRE - 30, CENTRE + 15),
                                                                abs=0.01)


def test_outside_the_image_is_no_data(review: ReviewSlices) -> None:
    # The planes are 220 mm wide, the images 200 x 200 x 160 mm: their edges are no data.
    for (p, i), a in review.images.items():
        assert a[0, 0] == NO_DATA and a[-1, -1] == NO_DATA, (p, i)
        assert (a != NO_DATA).sum() > 20_000, (p, i)


def test_values_beyond_int16_are_clipped_clear_of_no_data() -> None:
    fixed = phantom(corner=-90_000.0)
    r = review_slices(fixed, fixed, np.eye(4), (-99.0, -99.0, -79.0))  # that voxel's centre
    axial = r.images[("axial", "fixed")]
    # Clipped to one above "no data", never onto it: the page must not blank dense voxels.
    assert np.min(axial[axial != NO_DATA]) == NO_DATA + 1
    assert (axial == NO_DATA).any()


def test_a_bad_isocentre_or_matrix_is_refused() -> None:
    fixed = phantom()
    with pytest.raises(ValueError, match="isocentre"):
        review_slices(fixed, fixed, np.eye(4), (1.0, 2.0))
    with pytest.raises(ValueError, match="matrix"):
        review_slices(fixed, fixed, np.eye(3), ISO)


def test_the_messages_fit_their_schemas_and_decode_to_the_images(review: ReviewSlices) -> None:
    req = ReviewRequest(room="room1", registration_id="reg-0123456789ab",
                        fixed_label="planning CT 1.2.3", moving_label="daily CT 1.2.4")
    out = encode_review(review, req, ts=1_700_000_000.0)
    assert out.registration_id == req.registration_id
    meta = ReviewMetaMessage.model_validate_json(out.meta)
    assert (meta.room, meta.registration_id, meta.fixed, meta.moving) == (
        "room1", req.registration_id, "planning CT 1.2.3", "daily CT 1.2.4")
    assert meta.matrix == [list(row) for row in shift_matrix(SHIFT)]
    assert meta.iso_mm == ISO and (meta.rows, meta.cols, meta.pixel_mm) == (220, 220, 1.0)
    assert meta.planes == list(PLANES) and meta.images == list(IMAGES)
    assert meta.window.centre == review.window_centre and meta.no_data == NO_DATA
    assert [(i.plane, i.image) for i in out.images] == [(p, i) for p in PLANES for i in IMAGES]
    for item in out.images:
        msg = ReviewImageMessage.model_validate_json(item.payload)
        assert (msg.plane, msg.image, msg.registration_id, msg.room) == (
            item.plane, item.image, req.registration_id, "room1")
        a = np.frombuffer(base64.b64decode(msg.data), dtype="<i2").reshape(msg.rows, msg.cols)
        assert np.array_equal(a, review.images[(item.plane, item.image)])
        # One message per image: ~130 KB, under the broker's 256 KiB packet limit.
        assert 120_000 < len(item.payload) < 140_000
        assert json.loads(item.payload)["dtype"] == "int16le"
