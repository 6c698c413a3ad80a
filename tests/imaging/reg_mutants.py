"""Hostile variants of a valid DICOM REG file, reproducible from a seed.

Each mutant is what a damaged disk, a broken exporter or an adversary could
hand to `igrtctl reg show` / `propose`: flipped bytes, truncation, inserted
garbage, sequences nested thousands deep, wrong or unknown VRs, and element
lengths far beyond the file.
"""

from __future__ import annotations

import datetime as dt
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom

from imaging.dicom_reg import write_registration

PLAN_FOR = "1.2.826.0.1.3680043.8.498.2001"
DAILY_FOR = "1.2.826.0.1.3680043.8.498.2002"
SOP_UID = "1.2.826.0.1.3680043.8.498.2005"
HEADER = 132  # preamble + "DICM": mutants keep it, so they reach the DICOM parser

# VR codes pydicom knows, plus some it does not.
_VRS = [b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
        b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US",
        b"UT", b"ZZ", b"\x00\x00", b"Q1", b"sq"]


def valid_reg(path: Path) -> bytes:
    """A rigid REG written by the project's own writer."""
    c, s = np.cos(0.03), np.sin(0.03)
    m = np.array([[c, -s, 0, 2.5], [s, c, 0, -1.0], [0, 0, 1, 4.0], [0, 0, 0, 1]])
    write_registration(path, m, patient_id="PAT-7", patient_name="Hostile^Files",
                       fixed_frame_of_reference_uid=PLAN_FOR,
                       moving_frame_of_reference_uid=DAILY_FOR,
                       study_uid="1.2.826.0.1.3680043.8.498.2003",
                       series_uid="1.2.826.0.1.3680043.8.498.2004",
                       content_datetime=dt.datetime(2026, 3, 4, 5, 6, 7))
    # The writer draws a fresh SOP Instance UID; a fixed one makes the bytes, and
    # so every mutant of a seed, the same on every run.
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def nested_sequence(depth: int) -> bytes:
    """An explicit-VR element (0008,1115) whose items each hold the next level."""
    tag_sq = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (tag_sq + item) * depth + (item_end + seq_end) * depth


def _vr_offsets(data: bytes) -> list[int]:
    """Offsets of explicit-VR codes after the header (a tag's 4 bytes come first)."""
    known = set(_VRS[:25])
    return [i for i in range(HEADER + 4, len(data) - 2) if data[i:i + 2] in known
            and data[i - 4:i - 2] != b"\xfe\xff"]


def _flip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(HEADER, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(HEADER, len(data))]


def _garbage(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(HEADER, len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data[:i] + junk + data[i:]


def _deep(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice([20, 200, 1200, 5000])
    # Appended at the end: the tag (0008,1115) sorts before the registration's
    # elements, and readers meet it wherever it is.
    return data + nested_sequence(depth)


def _wrong_vr(rng: random.Random, data: bytes) -> bytes:
    offsets = _vr_offsets(data)
    b = bytearray(data)
    for i in rng.sample(offsets, k=min(len(offsets), rng.randint(1, 3))):
        b[i:i + 2] = rng.choice(_VRS)
    return bytes(b)


def _huge_length(rng: random.Random, data: bytes) -> bytes:
    offsets = _vr_offsets(data)
    b = bytearray(data)
    i = rng.choice(offsets)
    vr = bytes(b[i:i + 2])
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        b[i + 4:i + 8] = struct.pack("<I", rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000]))
    else:
        b[i + 2:i + 4] = struct.pack("<H", rng.choice([0xFFFF, 0xFFFE, 0x8000]))
    return bytes(b)


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _flip, "truncate": _truncate, "garbage": _garbage, "deep": _deep,
    "wrong_vr": _wrong_vr, "huge_length": _huge_length,
}


def mutants(valid: bytes, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """`count` (kind, bytes) mutants, every kind in turn, reproducible from `seed`."""
    rng = random.Random(seed)
    kinds = sorted(MUTATIONS)
    for n in range(count):
        kind = kinds[n % len(kinds)]
        yield f"{n:03d}-{kind}", MUTATIONS[kind](rng, valid)
