"""Reading DICOM files igrt did not write, as hostile input.

pydicom is a permissive parser: on damaged or malicious bytes it raises
whatever its code path meets (InvalidDicomError, NotImplementedError for an
unknown VR, BytesLengthException, struct errors, AttributeError, KeyError,
RecursionError on sequences nested thousands deep, ...), many of them only
later, when an element is first accessed (values are decoded lazily), and it
warns or logs about odd values on the user's terminal. Every caller in igrt
wants one thing instead: a dataset it can vouch for, or one `DicomFileError`
(a ValueError) with a one-line message naming the file and the problem.

`read_dataset` therefore reads the bytes with a size bound, parses them with
pydicom's warnings and log records captured, then decodes every element of
every item down to a bounded sequence depth, all inside one guard, so nothing
pydicom can raise on these bytes is left for a later access to raise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

# A REG or an image header is kilobytes; a CT slice with pixels a few MB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# A REG nests 3 levels (Registration > MatrixRegistration > Matrix); image headers
# rarely more than 4. Deeper is not a file igrt can use.
MAX_SEQUENCE_DEPTH = 8
MAX_ELEMENTS = 200_000


class DicomFileError(ValueError):
    """A DICOM file igrt will not use; the message is one line and names the file."""


def one_line(text: str, limit: int = 200) -> str:
    """`text` as one printable line of at most `limit` characters."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """A parser exception as one line: its message, or its type when it has none."""
    text = one_line(str(exc))
    return text or type(exc).__name__


class _Muted:
    """The pydicom logger muted while any reader runs (igrtd reads in worker threads:
    a counter, so overlapping reads restore the level once, at the last exit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._level = logging.NOTSET

    def enter(self) -> None:
        with self._lock:
            log = logging.getLogger("pydicom")
            if self._depth == 0:
                self._level = log.level
                log.setLevel(logging.CRITICAL + 1)
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                logging.getLogger("pydicom").setLevel(self._level)


_MUTED = _Muted()


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log records about odd values reach nobody's terminal:
    the caller reports a refusal in one line or uses the file, nothing in between."""
    _MUTED.enter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _MUTED.exit()


class _Decoder:
    """Walks a dataset decoding every element, with depth and count bounds."""

    def __init__(self) -> None:
        self.count = 0

    def walk(self, ds: Dataset, depth: int) -> None:
        if depth > MAX_SEQUENCE_DEPTH:
            raise DicomFileError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
        # Iterating converts each raw element (VR, length and value decoding);
        # hostile bytes raise here, inside the guard, not at a later access.
        for elem in ds:
            self.count += 1
            if self.count > MAX_ELEMENTS:
                raise DicomFileError(f"more than {MAX_ELEMENTS} data elements")
            value = elem.value
            if elem.VR == "SQ":
                for item in value or ():
                    if not isinstance(item, Dataset):
                        raise DicomFileError(f"sequence {elem.tag} holds a non-item value")
                    self.walk(item, depth + 1)


def read_dataset(
    path: str | Path, *, stop_before_pixels: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    """The fully decoded dataset of a DICOM Part 10 file, or DicomFileError (one line)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DicomFileError(f"cannot read DICOM file {p}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise DicomFileError(f"DICOM file {p} is larger than {max_bytes} bytes")
    return decoded(lambda: pydicom.dcmread(io.BytesIO(data),
                                           stop_before_pixels=stop_before_pixels),
                   f"DICOM file {p}")


def decoded(load: Callable[[], Dataset], what: str) -> Dataset:
    """The dataset `load` returns, fully decoded inside one guard (a file's bytes,
    or a dataset received over the network, which pynetdicom decodes lazily from
    the bytes a peer sent), or DicomFileError naming `what`."""
    try:
        with quiet_pydicom():
            ds = load()
            _Decoder().walk(ds, 0)
    except DicomFileError as exc:
        raise DicomFileError(f"cannot read {what}: {exc}") from None
    except RecursionError:
        raise DicomFileError(f"cannot read {what}: sequences nested too deeply "
                             f"(limit {MAX_SEQUENCE_DEPTH} levels)") from None
    except Exception as exc:  # noqa: BLE001 - third-party parser on untrusted bytes
        raise DicomFileError(f"cannot read {what}: {describe(exc)}") from None
    return ds
