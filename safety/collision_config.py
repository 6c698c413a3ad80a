"""Configuration of the collision model (issue 17): the room's objects and the patient envelope.

This is the boundary form, validated by pydantic: what igrtd reads from the
`collision` section of its configuration (margins, room dimensions, default
patient envelope) and what a session names as its patient envelope. Everything
is in millimetres and degrees, in the IEC 61217 frames of docs/geometry.md;
`safety.collision_model` turns it into solids and `safety.collision` checks
couch moves against them. Defaults describe a typical C-arm linac (see
docs/collision.md for where each number comes from).

Gantry-mounted objects are described in the gantry frame at gantry angle 0
(MV beam from above): each sits on a ray from the isocentre at
`angle_offset_deg` from the MV source, rotated about room +Y the same way as
the gantry (0 = +Z, 90 = +X), with `near_mm` the distance of its face nearest
the isocentre. Table-top objects are in the table-top frame (room coordinates
at the zero couch pose).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# strict: `true` is not 1 and "5" is not 5; allow_inf_nan=False: every number is finite.
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

# Sizes: a positive length no room object exceeds (10 m), so a typo like 1e9 is refused.
Size = Annotated[float, Field(gt=0.0, le=10_000.0)]
Coordinate = Annotated[float, Field(ge=-10_000.0, le=10_000.0)]


_M = TypeVar("_M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = _STRICT


class GantryBox(_Strict):
    """A box carried by the gantry on a ray from the isocentre (kV source, kV panel, EPID, head).

    `width_mm` is across the ray in the gantry rotation plane, `length_mm`
    along the gantry axis (room Y, centred at `y_offset_mm`), `thickness_mm`
    along the ray, starting `near_mm` from the isocentre.
    """

    angle_offset_deg: float = Field(ge=-360.0, le=360.0)
    near_mm: Size
    thickness_mm: Size
    width_mm: Size
    length_mm: Size
    y_offset_mm: Coordinate = 0.0


class Collimator(_Strict):
    """The collimator: a cylinder on the MV beam axis, its face `near_mm` from the
    isocentre. A cylinder, so the collimator angle does not change it."""

    near_mm: Size = 400.0
    length_mm: Size = 250.0
    diameter_mm: Size = 600.0


class CouchTop(_Strict):
    """The table top at the zero couch pose: centred on X, upper surface at
    `surface_z_mm`, its gantry end at `gantry_end_y_mm`."""

    width_mm: Size = 530.0
    length_mm: Size = 2000.0
    thickness_mm: Size = 50.0
    gantry_end_y_mm: Coordinate = 700.0
    # The pitch/roll pivot of the default couch model is (0, 0, -150): on this surface.
    surface_z_mm: Coordinate = -150.0


class CouchBase(_Strict):
    """The couch base (pedestal) at the zero couch pose, centred on X.

    It turns with the couch yaw (about the vertical axis through the
    isocentre) and rises with `vert`; it never pitches or rolls. The table top
    slides over it for lat and long unless `moves_with_lat_long` (a couch whose
    whole base travels).
    """

    width_mm: Size = 600.0
    depth_mm: Size = 600.0
    centre_y_mm: Coordinate = -1200.0
    top_z_mm: Coordinate = -250.0
    bottom_z_mm: Coordinate = -1300.0
    moves_with_lat_long: bool = False

    @model_validator(mode="after")
    def _top_above_bottom(self) -> CouchBase:
        if not self.bottom_z_mm < self.top_z_mm:
            raise ValueError(f"couch base bottom_z_mm {self.bottom_z_mm:g} mm must be below "
                             f"top_z_mm {self.top_z_mm:g} mm")
        return self


def _head() -> GantryBox:
    return GantryBox(angle_offset_deg=0.0, near_mm=650.0, thickness_mm=650.0,
                     width_mm=800.0, length_mm=800.0)


def _kv_source() -> GantryBox:
    # Focal spot at 1000 mm (the kV SAD) inside a housing whose port faces the isocentre.
    return GantryBox(angle_offset_deg=90.0, near_mm=900.0, thickness_mm=350.0,
                     width_mm=350.0, length_mm=350.0)


def _kv_panel() -> GantryBox:
    return GantryBox(angle_offset_deg=270.0, near_mm=500.0, thickness_mm=100.0,
                     width_mm=450.0, length_mm=450.0)


def _epid() -> GantryBox:
    return GantryBox(angle_offset_deg=180.0, near_mm=500.0, thickness_mm=100.0,
                     width_mm=450.0, length_mm=450.0)


class RoomGeometry(_Strict):
    """The treatment machine and the couch. Parked imager arms are retracted into
    the gantry housing, out of the couch's reach, and are not modelled."""

    gantry_head: GantryBox = Field(default_factory=_head)
    collimator: Collimator = Field(default_factory=Collimator)
    kv_source: GantryBox = Field(default_factory=_kv_source)
    kv_panel: GantryBox = Field(default_factory=_kv_panel)
    epid: GantryBox = Field(default_factory=_epid)
    couch_top: CouchTop = Field(default_factory=CouchTop)
    couch_base: CouchBase = Field(default_factory=CouchBase)


class BodyBox(_Strict):
    """The body as a box lying on the table top, centred on the table-top X axis."""

    shape: Literal["box"] = "box"
    width_mm: Size = 500.0
    height_mm: Size = 250.0


class BodyCylinder(_Strict):
    """The body as a circular cylinder lying on the table top along Y."""

    shape: Literal["cylinder"]
    diameter_mm: Size = 400.0


class ArmsUp(_Strict):
    """Where raised arms are: a box wider and taller than the body around the head
    end, from `toward_feet_mm` below the head end (elbows) to `beyond_head_mm` past it."""

    width_mm: Size = 640.0
    height_mm: Size = 300.0
    toward_feet_mm: Size = 650.0
    beyond_head_mm: Annotated[float, Field(ge=0.0, le=2000.0)] = 150.0


class PatientEnvelope(_Strict):
    """The space the patient may occupy, relative to the table top (per session).

    The body runs along table-top Y from `feet_y_mm` to `head_y_mm` (the head
    toward the gantry for a head-first patient: head_y > feet_y). With arms up,
    the `arms_up` box is added at the head end.
    """

    body: BodyBox | BodyCylinder = Field(default_factory=BodyBox, discriminator="shape")
    head_y_mm: Coordinate = 550.0
    feet_y_mm: Coordinate = -1250.0
    arms: Literal["down", "up"] = "down"
    arms_up: ArmsUp = Field(default_factory=ArmsUp)

    @model_validator(mode="after")
    def _has_length(self) -> PatientEnvelope:
        if not abs(self.head_y_mm - self.feet_y_mm) >= 100.0:
            raise ValueError(f"patient length |head_y_mm - feet_y_mm| = "
                             f"{abs(self.head_y_mm - self.feet_y_mm):g} mm is below 100 mm")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PatientEnvelope:
        """Validate a session's patient envelope; ValueError with one line on bad input."""
        return _validate(cls, data, "patient envelope")


class CollisionConfig(_Strict):
    """The `collision` section of igrtd's configuration.

    `margin_mm`: a planned move whose clearance anywhere along its path is below
    this is refused. `hard_margin_mm`: during motion, a reported pose closer
    than this stops the couch (below the planning margin, so that a move that
    was allowed does not trip it).
    """

    margin_mm: float = Field(default=50.0, ge=0.0, le=500.0)
    hard_margin_mm: float = Field(default=20.0, ge=0.0, le=500.0)
    room: RoomGeometry = Field(default_factory=RoomGeometry)
    patient: PatientEnvelope = Field(default_factory=PatientEnvelope)
    # The EPID has no PLC input: where it is during couch moves, by site practice.
    epid_extended: bool = False
    # A room without a PLC (a bench rig) has no gantry reading: this angle instead.
    gantry_deg_without_plc: float = Field(default=0.0, ge=0.0, lt=360.0)

    @model_validator(mode="after")
    def _hard_margin_below_margin(self) -> CollisionConfig:
        if self.hard_margin_mm > self.margin_mm:
            raise ValueError(f"hard_margin_mm {self.hard_margin_mm:g} mm must not exceed "
                             f"margin_mm {self.margin_mm:g} mm")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CollisionConfig:
        """Validate a `collision` section; ValueError with one line on bad input."""
        return _validate(cls, data, "collision")


def _validate(cls: type[_M], data: Mapping[str, Any], what: str) -> _M:
    if not isinstance(data, Mapping):
        # ValueError, not TypeError: this is bad user input, reported like any other.
        raise ValueError(f"{what}: expected an object, got {type(data).__name__}")  # noqa: TRY004
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"{what}: {loc}: {msg}{more}".replace("\n", " ")) from None
