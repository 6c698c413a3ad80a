"""The room's QA phantom as igrtd knows it, and the frame of a QA CBCT.

The phantom is set up along the lasers with its centre on the treatment isocentre and
imaged head-first supine (HFS) about iso (0, 0, 0), so an image point q is room point
M(HFS) q: room x = q.x, room y = q.z, room z = -q.y (docs/geometry.md, "Patient
orientation"). Its BB offset is configuration (`qa.phantom_bb_offset_mm`); its air
holes are the physical phantom's (below).
"""

from __future__ import annotations

Vec3 = tuple[float, float, float]

QA_ISO: Vec3 = (0.0, 0.0, 0.0)
QA_POSITION = "HFS"
BB_SEARCH_RADIUS_MM = 40.0
# The room's QA phantom: centres (phantom frame = its planning frame, DICOM LPS mm about
# the cube's centre, as imaged HFS: x = room x, y = -room z, z = room y when laid along
# the lasers) and radii (mm) of its three air holes. With the BB they are the fiducials
# whose rigid fit measures each QA image's motion (registration_worker._qa_shift_files).
# They describe the physical phantom (sim/qa_phantom.py AIR_HOLES models the same one;
# tests/simroom/test_qa_phantom.py checks they agree).
QA_PHANTOM_AIR_HOLES: tuple[tuple[Vec3, float], ...] = (
    ((-45.0, 35.0, 50.0), 5.0),
    ((50.0, -40.0, -35.0), 4.0),
    ((-35.0, -50.0, -50.0), 6.0),
)

def room_from_image(q: Vec3) -> Vec3:
    """An image (DICOM LPS, HFS about iso 0) point in the room frame: M(HFS) q."""
    return (q[0], q[2], -q[1])


def image_from_room(r: Vec3) -> Vec3:
    """A room point in the image frame of a QA CBCT: M(HFS)^-1 r."""
    return (r[0], -r[2], r[1])


def holes_from_bb(bb_offset_room_mm: Vec3) -> tuple[tuple[Vec3, float], ...]:
    """The phantom's air holes relative to its BB in the image frame of a QA CBCT (DICOM
    LPS, mm; HFS) and their radii: hole centre - BB centre in the phantom frame, the BB
    being at `bb_offset_room_mm` (config `qa.phantom_bb_offset_mm`) from the centre."""
    bb = image_from_room(bb_offset_room_mm)
    return tuple(((c[0] - bb[0], c[1] - bb[1], c[2] - bb[2]), r)
                 for c, r in QA_PHANTOM_AIR_HOLES)
