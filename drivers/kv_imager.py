"""Wire protocol of the kV imaging system's frame stream (docs/intrafraction-monitoring.md).

One stream connection (a Unix socket owned by igrtd) carries messages in both
directions, each one a fixed 12-byte prefix followed by its body:

    magic (4 bytes) | header length (u32 LE) | payload length (u32 LE)
    header: UTF-8 JSON object, at most MAX_HEADER_BYTES
    payload: raw bytes, at most MAX_PAYLOAD_BYTES

* imaging system -> igrtd, magic ``IGKV``: one frame. The header is
  ``{"v": 1, "frame_id": int, "acquired_at": UNIX s, "views": [view, ...]}``
  where each view is ``{"rows", "cols", "pixel_mm", "offset_mm": [u, v],
  "metadata": KvGeometry.to_metadata()}``; the payload is the views' images,
  row-major little-endian float32 line integrals, one after the other.
* igrtd -> imaging system, magic ``IGKC``: a command, header only
  (``{"v": 1, "cmd": "acquire", "rate_hz": 10.0}`` or ``{"v": 1, "cmd": "stop"}``).

Everything is validated before it is believed: sizes against limits and
against each other, the header against its schema, the geometry through
imaging.drr.KvGeometry, the pixels for finiteness. Any problem raises
`KvProtocolError` with a one-line message; the caller drops the frame and the
connection (after a bad prefix the framing cannot be trusted). No policy here:
whether a frame is recent or matches the commissioned geometry is the
daemon's business.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imaging.drr import KIND_KV, META_ANGLE, META_KIND, META_SAD, META_SID, KvGeometry
from safety import strict_json

FRAME_MAGIC = b"IGKV"
COMMAND_MAGIC = b"IGKC"
PREFIX = struct.Struct("<4sII")
MAX_HEADER_BYTES = 64 * 1024
MAX_VIEWS = 4
MAX_SIDE_PX = 4096
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024 * 32  # 64 MiB: four 2048 x 2048 float32 views
PIXEL_DTYPE = np.dtype("<f4")


class KvProtocolError(ValueError):
    """A message that breaks the protocol; the text is one line for logs and audit."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ViewHeader(_Strict):
    rows: int = Field(ge=2, le=MAX_SIDE_PX)
    cols: int = Field(ge=2, le=MAX_SIDE_PX)
    pixel_mm: float = Field(gt=0, le=10, allow_inf_nan=False)
    offset_mm: tuple[float, float] = (0.0, 0.0)
    metadata: dict[str, str]


class FrameHeader(_Strict):
    v: Literal[1]
    frame_id: int = Field(ge=0, lt=2**63)
    acquired_at: float = Field(gt=0, allow_inf_nan=False, description="UNIX seconds")
    views: list[ViewHeader] = Field(min_length=1, max_length=MAX_VIEWS)


class CommandHeader(_Strict):
    v: Literal[1]
    cmd: Literal["acquire", "stop"]
    rate_hz: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)


@dataclass(frozen=True)
class WireFrame:
    """One validated frame as received."""

    frame_id: int
    acquired_at: float  # UNIX s, the imaging system's clock
    geometries: tuple[KvGeometry, ...]
    images: tuple[np.ndarray, ...]  # float32 [row, column], read-only


def _one_line(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "header"
    return f"{loc}: {e['msg']}"


def _view_geometry(i: int, view: ViewHeader) -> KvGeometry:
    meta = view.metadata
    if meta.get(META_KIND) != KIND_KV:
        raise KvProtocolError(f"view {i}: {META_KIND} is {meta.get(META_KIND)!r}, "
                              f"expected {KIND_KV!r}")
    vals = {}
    for key in (META_SAD, META_SID, META_ANGLE):
        text = meta.get(key)
        if text is None:
            raise KvProtocolError(f"view {i}: no {key} metadata (kV geometry unknown)")
        try:
            vals[key] = float(text)
        except ValueError:
            raise KvProtocolError(f"view {i}: {key} is not a number ({text[:40]!r})") from None
        if not math.isfinite(vals[key]):
            raise KvProtocolError(f"view {i}: {key} is not finite ({text[:40]!r})")
    if not all(math.isfinite(v) for v in view.offset_mm):
        raise KvProtocolError(f"view {i}: detector offset {list(view.offset_mm)} mm is not finite")
    try:
        return KvGeometry(angle_deg=vals[META_ANGLE], sad_mm=vals[META_SAD], sid_mm=vals[META_SID],
                          size_px=(view.cols, view.rows), pixel_mm=view.pixel_mm,
                          offset_mm=view.offset_mm)
    except ValueError as exc:
        raise KvProtocolError(f"view {i}: {exc}") from None


def _parse_json(raw: bytes, what: str) -> Any:
    # The shared strict reader: a deeply nested header raised RecursionError
    # from json.loads (issue 11); NaN/Infinity and duplicate keys are refused.
    try:
        return strict_json.loads(raw, max_depth=8, max_bytes=MAX_HEADER_BYTES)
    except strict_json.JsonInputError as exc:
        raise KvProtocolError(f"{what} header is not UTF-8 JSON igrt accepts: "
                              f"{str(exc)[:80]}") from None


def decode_frame(header: bytes, payload: bytes) -> WireFrame:
    """Validate one frame message body; KvProtocolError names the first problem."""
    try:
        h = FrameHeader.model_validate(_parse_json(header, "frame"))
    except ValidationError as exc:
        raise KvProtocolError(f"frame header: {_one_line(exc)}") from None
    geometries = tuple(_view_geometry(i, v) for i, v in enumerate(h.views))
    sizes = [v.rows * v.cols * PIXEL_DTYPE.itemsize for v in h.views]
    if sum(sizes) != len(payload):
        raise KvProtocolError(f"frame {h.frame_id}: payload is {len(payload)} bytes, the views "
                              f"need {sum(sizes)} (float32)")
    images = []
    offset = 0
    for i, (v, n) in enumerate(zip(h.views, sizes)):
        img = np.frombuffer(payload, dtype=PIXEL_DTYPE, count=v.rows * v.cols, offset=offset)
        offset += n
        bad = int(np.count_nonzero(~np.isfinite(img)))
        if bad:
            raise KvProtocolError(f"frame {h.frame_id} view {i}: {bad} non-finite pixels")
        images.append(img.reshape(v.rows, v.cols))
    return WireFrame(h.frame_id, h.acquired_at, geometries, tuple(images))


def encode_frame(frame_id: int, acquired_at: float, geometries: Sequence[KvGeometry],
                 images: Sequence[np.ndarray]) -> bytes:
    """The bytes of one frame message (the imaging system's side)."""
    if len(geometries) != len(images):
        raise ValueError(f"{len(geometries)} geometries for {len(images)} images")
    views = []
    parts = []
    for g, img in zip(geometries, images):
        a = np.ascontiguousarray(img, dtype=PIXEL_DTYPE)
        if a.shape != (g.size_px[1], g.size_px[0]):
            raise ValueError(f"image {a.shape} does not match the geometry's "
                             f"{(g.size_px[1], g.size_px[0])} (rows, cols)")
        views.append({"rows": a.shape[0], "cols": a.shape[1], "pixel_mm": g.pixel_mm,
                      "offset_mm": list(g.offset_mm), "metadata": g.to_metadata()})
        parts.append(a.tobytes())
    header = json.dumps({"v": 1, "frame_id": int(frame_id), "acquired_at": float(acquired_at),
                         "views": views}).encode()
    payload = b"".join(parts)
    return PREFIX.pack(FRAME_MAGIC, len(header), len(payload)) + header + payload


def encode_command(cmd: str, rate_hz: float | None = None) -> bytes:
    """The bytes of one igrtd -> imaging system command."""
    body = CommandHeader(v=1, cmd=cmd, rate_hz=rate_hz)  # type: ignore[arg-type]
    header = body.model_dump_json(exclude_none=True).encode()
    return PREFIX.pack(COMMAND_MAGIC, len(header), 0) + header


async def _read_message(reader: asyncio.StreamReader, magic: bytes
                        ) -> tuple[bytes, bytes] | None:
    """(header, payload) of the next message, None on a clean end of stream."""
    try:
        prefix = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise KvProtocolError(f"stream ended inside a message prefix ({len(exc.partial)} of "
                              f"{PREFIX.size} bytes)") from None
    got, n_header, n_payload = PREFIX.unpack(prefix)
    if got != magic:
        raise KvProtocolError(f"bad message magic {got!r}, expected {magic!r}")
    if not 2 <= n_header <= MAX_HEADER_BYTES:
        raise KvProtocolError(f"header length {n_header} bytes outside 2..{MAX_HEADER_BYTES}")
    if n_payload > MAX_PAYLOAD_BYTES:
        raise KvProtocolError(f"payload length {n_payload} bytes exceeds the limit "
                              f"{MAX_PAYLOAD_BYTES}")
    try:
        header = await reader.readexactly(n_header)
        payload = await reader.readexactly(n_payload) if n_payload else b""
    except asyncio.IncompleteReadError as exc:
        raise KvProtocolError(f"stream ended inside a message ({len(exc.partial)} bytes of a "
                              f"{n_header}-byte header or {n_payload}-byte payload)") from None
    return header, payload


async def read_frame(reader: asyncio.StreamReader) -> WireFrame | None:
    """The next frame, None on a clean end of stream; KvProtocolError on bad bytes."""
    msg = await _read_message(reader, FRAME_MAGIC)
    return None if msg is None else decode_frame(*msg)


async def read_command(reader: asyncio.StreamReader) -> CommandHeader | None:
    """The next igrtd command (imaging system's side), None on a clean end of stream."""
    msg = await _read_message(reader, COMMAND_MAGIC)
    if msg is None:
        return None
    header, payload = msg
    if payload:
        raise KvProtocolError(f"command with a {len(payload)}-byte payload")
    try:
        return CommandHeader.model_validate(_parse_json(header, "command"))
    except ValidationError as exc:
        raise KvProtocolError(f"command header: {_one_line(exc)}") from None
