"""Review images for the browser console, as they cross between igrtd and its
registration worker: what igrtd asks for, and the encoded messages it gets back.

No numpy and no SimpleITK here, on purpose: igrtd unpickles these objects from
the worker (daemon/registration_worker.py), and unpickling imports the module
that defines them. igrtd only passes the bytes on to the broker; the slicing
(imaging/review_slices.py) and the base64 and JSON encoding happen in the
worker, off igrtd's event loop. The message shapes are documented by the
pydantic models `ReviewMetaMessage` and `ReviewImageMessage` of
daemon/console/schemas.py (docs/console-api.md, "Review images").
"""

from __future__ import annotations

from dataclasses import dataclass

PLANES = ("axial", "coronal", "sagittal")
IMAGES = ("fixed", "moving_before", "moving_after")
# The pixel value that means "outside the image"; the lowest int16, which no
# real value is clipped to (see imaging/review_slices.py).
NO_DATA = -32768


@dataclass(frozen=True)
class ReviewRequest:
    """What igrtd tells the worker to put into the review messages besides the images."""

    room: str
    registration_id: str
    fixed_label: str
    moving_label: str
    # Where the three planes cross; None: where the registration was centred (the
    # daily image's centre when it was given no isocentre either).
    iso_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ReviewImage:
    """One encoded image message: `payload` goes to igrt/{room}/review/{plane}/{image}."""

    plane: str
    image: str
    payload: bytes


@dataclass(frozen=True)
class ReviewMessages:
    """The encoded review of one registration: the meta message and its nine images."""

    registration_id: str
    meta: bytes
    images: tuple[ReviewImage, ...]

    @property
    def total_bytes(self) -> int:
        return len(self.meta) + sum(len(i.payload) for i in self.images)
