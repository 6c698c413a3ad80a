"""Message schemas of the MQTT console API, version 1.

Every JSON message on an `igrt/{room}/...` topic carries `v`, the schema
version, so a console can refuse a message it does not understand instead of
misreading it. The JSON Schema files in docs/schemas/ are generated from these
models by `export_schemas` (a test keeps them in step); the `*-args` schemas
come from the command registry (daemon/commands.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from daemon.commands import ARGS_MODELS, CommandName

SCHEMA_VERSION = 1

# A console id names a reply topic; it is used as one MQTT topic level, so no
# wildcards or separators: a hostile reply_to must not reach another topic.
CONSOLE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
ROOM_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
JTI_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"


def topic(room: str, leaf: str) -> str:
    """`igrt/{room}/{leaf}`: the one place topic names are spelled."""
    return f"igrt/{room}/{leaf}"


def reply_topic(room: str, console_id: str) -> str:
    return f"igrt/{room}/reply/{console_id}"


def review_topic(room: str, plane: str | None = None, image: str | None = None) -> str:
    """`igrt/{room}/review/meta`, or `igrt/{room}/review/{plane}/{image}` for one image."""
    if plane is None or image is None:
        return topic(room, "review/meta")
    return topic(room, f"review/{plane}/{image}")


# Free-form JSON objects inside a message are `Mapping[str, object]`: pydantic
# validates and schemas them exactly like a dict of anything (a test keeps
# docs/schemas/ in step), while mypy makes a reader narrow each value
# (daemon.jsontypes) and lets a writer pass any JsonObject. Spelled out, not
# the JsonMapping alias, because pydantic evaluates these annotations.


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = Field(default=1, description="schema version (SCHEMA_VERSION)")


# --- command (the JWS payload) -------------------------------------------


class CommandClaims(_Message):
    """Claims of a signed console command (the payload of a compact JWS)."""

    # NaN compares false with everything, so a NaN iat/exp would pass every
    # lifetime check: only finite numbers are times.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cmd: CommandName = Field(description="RoomCommands method to call")
    args: Mapping[str, object] = Field(
        default_factory=dict, description="arguments of cmd, see the *-args schemas"
    )
    sub: str = Field(min_length=1, max_length=64, description="user who signed the command")
    aud: str = Field(pattern=ROOM_PATTERN, description="room the command is meant for")
    iat: float = Field(description="issued at, UNIX seconds")
    exp: float = Field(description="expires at, UNIX seconds; at most 30 s after iat")
    jti: str = Field(pattern=JTI_PATTERN, description="unique token id; used once")
    reply_to: str = Field(
        pattern=CONSOLE_ID_PATTERN,
        description="console id: the reply goes to igrt/{room}/reply/{reply_to}",
    )


# --- daemon -> console ----------------------------------------------------


class ReplyMessage(_Message):
    """Answer to one command, on igrt/{room}/reply/{console_id}."""

    room: str
    jti: str | None = Field(description="jti of the command answered, when it could be read")
    cmd: str | None = None
    ok: bool
    result: Mapping[str, object] | None = Field(default=None, description="RoomCommands result")
    code: str | None = Field(default=None, description="machine-readable rejection code")
    reason: str | None = Field(default=None, description="one-line reason for the user")
    ts: float


class StateMessage(_Message):
    """Full room state snapshot, retained on igrt/{room}/state."""

    room: str
    seq: int = Field(description="increases with every state message of this daemon run")
    ts: float
    state: Mapping[str, object]


class TelemetryMessage(_Message):
    """Couch pose and interlocks, at most 20 per second, on igrt/{room}/telemetry."""

    model_config = ConfigDict(extra="allow")
    room: str
    seq: int
    ts: float
    couch: dict[str, float] | None = Field(default=None, description="pose, mm and deg")
    interlocks: Mapping[str, object] | None = None
    motion: Mapping[str, object] | None = None


class EventMessage(_Message):
    """An audit-worthy event, on igrt/{room}/events."""

    room: str
    seq: int
    ts: float
    event: str
    actor: str | None = None
    details: Mapping[str, object] = Field(default_factory=dict)


class StatusMessage(_Message):
    """Daemon presence, retained on igrt/{room}/status; 'offline' is the last will."""

    room: str
    status: Literal["online", "offline"]


# --- review images (docs/console-api.md, "Review images") ------------------
# Encoded in igrtd's registration worker (imaging/review_slices.py), not from
# these models: the worker does not load the daemon. A test holds the two together.

ReviewPlane = Literal["axial", "coronal", "sagittal"]
ReviewImageName = Literal["fixed", "moving_before", "moving_after"]
_MatrixRow = Annotated[list[float], Field(min_length=4, max_length=4)]


class ReviewWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    centre: float = Field(description="HU")
    width: float = Field(gt=0, description="HU")


class ReviewMetaMessage(_Message):
    """What the review images of the latest registration show, retained on
    igrt/{room}/review/meta; published after its nine images."""

    room: str
    ts: float
    registration_id: str = Field(description="the same in each of its image messages")
    matrix: list[_MatrixRow] = Field(
        min_length=4, max_length=4,
        description="4x4 fixed -> moving registration, as the register reply and the "
                    "proposal carry it")
    iso_mm: tuple[float, float, float] = Field(
        description="where the planes cross; pixel ((cols-1)/2, (rows-1)/2) of each image")
    fixed: str = Field(description="planning image (label)")
    moving: str = Field(description="daily image (label)")
    planes: list[ReviewPlane]
    images: list[ReviewImageName]
    rows: int = Field(gt=0)
    cols: int = Field(gt=0)
    pixel_mm: float = Field(gt=0)
    window: ReviewWindow = Field(description="suggested display window")
    no_data: Literal[-32768] = Field(default=-32768, description="pixel value: outside the image")


class ReviewImageMessage(_Message):
    """One review image, retained on igrt/{room}/review/{plane}/{image}: HU on the
    planning CT's scale, row 0 at the top, column 0 at the left."""

    room: str
    registration_id: str
    plane: ReviewPlane
    image: ReviewImageName
    rows: int = Field(gt=0)
    cols: int = Field(gt=0)
    pixel_mm: float = Field(gt=0)
    dtype: Literal["int16le"]
    data: str = Field(description="base64 of rows*cols little-endian int16, row-major; "
                                  "-32768 = no data")


def dumps(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=False).encode()


_EXPORTED: dict[str, type[BaseModel]] = {
    "command-claims": CommandClaims,
    "reply": ReplyMessage,
    "state": StateMessage,
    "telemetry": TelemetryMessage,
    "event": EventMessage,
    "status": StatusMessage,
    "review-meta": ReviewMetaMessage,
    "review-image": ReviewImageMessage,
    **{f"{name}-args": model for name, model in ARGS_MODELS.items()},
}


def schema_documents() -> dict[str, str]:
    """File name -> JSON Schema text, exactly as committed in docs/schemas/."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for name, model in _EXPORTED.items()
    }


def export_schemas(directory: str | Path) -> list[Path]:
    """Write the JSON Schema of every message to `directory`; returns the files."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
