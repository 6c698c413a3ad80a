"""A scenario file: a simulated room, a timed list of actions and the expectations
that must hold, so a hazard of docs/safety-case.md can be shown in a room.

    {"format": "igrt-sim-scenario/1", "name": "...", "hazard": "H-INTERLOCK",
     "room": "default", "steps": [{"at": 0.0, "open_session": {}}, ...]}

Read as strictly as a room description (sim/validation.py): unknown keys,
NaN/Infinity, numbers as text and values out of range are refused with one
line. The vocabulary is documented in docs/scenarios.md; the JSON Schema is
docs/schemas/sim/sim-scenario.schema.json (`python -m sim.scenario --write-schema`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads
from sim.room_description import ROOMS_DIR, RoomDescription, load_description
from sim.validation import Strict, one_line, schema_main

FORMAT = "igrt-sim-scenario/1"
SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
SCHEMA_PATH = (Path(__file__).resolve().parents[1] / "docs" / "schemas" / "sim"
               / "sim-scenario.schema.json")
MAX_BYTES = 1 << 18
MAX_DEPTH = 12
MAX_AT_S = 600.0

User = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
State = Literal["OFFLINE", "STANDBY", "READY", "PROPOSED", "AWAITING_APPROVAL", "CONFIRMED",
                "MOVING", "VERIFYING", "DONE", "STOPPED", "FAULT", "SERVICE", "MONITORING"]
CouchCommand = Literal["TARGET", "GO", "STOP", "RESET", "JOG"]
_Window = Annotated[float, Field(gt=0.0, le=120.0)]
# 0: the latest proposal of this scenario; n: the n-th, in the order they were made.
_ProposalRef = Annotated[int, Field(ge=0, le=100)]


class IgrtdCall(Strict):
    """Any igrtd command on its local socket, as `as` (signed with the demo key if the
    user has one, else this OS account's peer credentials)."""

    cmd: str = Field(pattern=r"^[a-z_]{1,40}$")
    as_: User = Field(default="alice", alias="as")
    args: dict[str, Any] = Field(default_factory=dict)


class OpenSession(Strict):
    """open_session for the room's patient (isocentre and position of its description)."""

    as_: User = Field(default="alice", alias="as")


class Shift(Strict):
    lat: float = Field(default=0.0, ge=-100.0, le=100.0, description="mm")
    long: float = Field(default=0.0, ge=-100.0, le=100.0, description="mm")
    vert: float = Field(default=0.0, ge=-100.0, le=100.0, description="mm")
    yaw: float = Field(default=0.0, ge=-10.0, le=10.0, description="deg")
    pitch: float = Field(default=0.0, ge=-3.0, le=3.0, description="deg")
    roll: float = Field(default=0.0, ge=-3.0, le=3.0, description="deg")


class Propose(Strict):
    """Propose the correction a perfect registration finds for a patient `shift` away
    from the couch's true pose now (imaged there, registration `age_s` old)."""

    shift: Shift
    as_: User = Field(default="alice", alias="as")
    age_s: float = Field(default=0.0, ge=0.0, le=10.0 * 365 * 86400,
                         description="how old the registration is")
    claimed_offset: Shift = Field(default_factory=Shift, description=(
        "the couch pose at imaging the request claims, off the true one by this"))


class Confirm(Strict):
    as_: User = Field(default="alice", alias="as")
    proposal: _ProposalRef = 0


class Approve(Strict):
    as_: User = Field(default="bob", alias="as")
    proposal: _ProposalRef = 0


class Hold(Strict):
    """Hold-to-run: press the pendant (PLC input) and send `hold` at 20 Hz until hold_stop."""

    as_: User = Field(default="alice", alias="as")
    proposal: _ProposalRef = 0
    pendant: bool = Field(default=True, description="press the motion-enable pendant first")


class HoldStop(Strict):
    """The finger leaves the button: no more `hold` heartbeats (no release sent)."""

    pendant: bool = Field(default=False, description="also let go of the pendant")


class SimOp(Strict):
    """One control operation of the room (docs/sim-control-api.md), in-process."""

    op: str = Field(pattern=r"^[a-z_]{1,40}$")
    args: dict[str, Any] = Field(default_factory=dict)


class Wait(Strict):
    """A barrier: later steps wait until this holds (a failed row if it never does)."""

    state: State | None = None
    couch_moving: bool | None = None
    within_s: _Window = 10.0

    @model_validator(mode="after")
    def _one(self) -> Wait:
        if (self.state is None) == (self.couch_moving is None):
            raise ValueError("wait for exactly one of state, couch_moving")
        return self


class Expect(Strict):
    """One expectation, measured from the actual time of its step (see docs/scenarios.md)."""

    couch_command: CouchCommand | None = Field(
        default=None, description="this command reaches the couch (device record)")
    no_couch_command: CouchCommand | None = Field(
        default=None, description="this command does not reach the couch for for_s")
    state: State | None = Field(default=None, description="igrtd's room state")
    audit: str | None = Field(default=None, pattern=r"^[a-z_]{1,40}$",
                              description="an audit record of this event kind")
    matching: str | None = Field(default=None, min_length=1, max_length=200,
                                 description="audit: text its details must contain")
    reply: str | None = Field(default=None, pattern=r"^[a-z_]{1,40}$", description=(
        "the latest igrtd reply: ok, or its error code"))
    couch_halted: Literal[True] | None = Field(
        default=None, description="no couch axis moves (ground truth)")
    within_ms: float | None = Field(default=None, gt=0.0, le=120_000.0)
    within_s: float | None = Field(default=None, gt=0.0, le=120.0)
    for_s: float | None = Field(default=None, gt=0.0, le=120.0)

    @model_validator(mode="after")
    def _one(self) -> Expect:
        kinds = [k for k in ("couch_command", "no_couch_command", "state", "audit", "reply",
                             "couch_halted") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("expect exactly one of couch_command, no_couch_command, state, "
                             f"audit, reply, couch_halted (got {', '.join(kinds) or 'none'})")
        kind = kinds[0]
        if self.matching is not None and kind != "audit":
            raise ValueError("matching goes with audit only")
        if kind == "no_couch_command":
            if self.for_s is None or self.within_ms is not None or self.within_s is not None:
                raise ValueError("no_couch_command takes for_s (and no within)")
        elif kind == "reply":
            if self.for_s is not None or self.within_ms is not None or self.within_s is not None:
                raise ValueError("reply is checked at once: no within_ms, within_s or for_s")
        elif self.for_s is not None or (self.within_ms is None) == (self.within_s is None):
            raise ValueError(f"{kind} takes one of within_ms, within_s")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("couch_command", "no_couch_command", "state", "audit", "reply",
                                "couch_halted") if getattr(self, k) is not None)

    @property
    def window_s(self) -> float:
        """How long the expectation may take to hold (or must hold, for no_couch_command)."""
        if self.for_s is not None:
            return self.for_s
        if self.within_ms is not None:
            return self.within_ms / 1000.0
        return self.within_s or 0.0

    def text(self) -> str:
        kind = self.kind
        subject = "true" if kind == "couch_halted" else str(getattr(self, kind))
        what = f"{kind} {subject}"
        if self.matching is not None:
            what += f" matching {self.matching!r}"
        if self.within_ms is not None:
            what += f" within {self.within_ms:g} ms"
        elif self.within_s is not None:
            what += f" within {self.within_s:g} s"
        elif self.for_s is not None:
            what += f" for {self.for_s:g} s"
        return what


ACTIONS = ("igrtd", "open_session", "propose", "confirm", "approve", "hold", "hold_stop",
           "sim", "wait")


class Step(Strict):
    at: float = Field(ge=0.0, le=MAX_AT_S, description="s from the scenario start")
    igrtd: IgrtdCall | None = None
    open_session: OpenSession | None = None
    propose: Propose | None = None
    confirm: Confirm | None = None
    approve: Approve | None = None
    hold: Hold | None = None
    hold_stop: HoldStop | None = None
    sim: SimOp | None = None
    wait: Wait | None = None
    expect: Expect | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        given = [k for k in (*ACTIONS, "expect") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a step has `at` and exactly one of {', '.join(ACTIONS)}, expect "
                             f"(got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in (*ACTIONS, "expect") if getattr(self, k) is not None)


class Scenario(Strict):
    """A simulated room, timed actions and expectations (docs/scenarios.md)."""

    format: Literal["igrt-sim-scenario/1"]
    name: str = Field(min_length=1, max_length=120)
    hazard: str = Field(pattern=r"^H-[A-Z0-9-]{1,40}$", description="docs/safety-case.md row")
    description: str = Field(default="", max_length=2000)
    room: RoomDescription | Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")] = Field(
        default="default", description="a shipped room (sim/rooms/NAME.json) or a description")
    steps: list[Step] = Field(min_length=1, max_length=500)

    @field_validator("steps")
    @classmethod
    def _in_time_order(cls, steps: list[Step]) -> list[Step]:
        for i in range(1, len(steps)):
            if steps[i].at < steps[i - 1].at:
                raise ValueError(f"steps[{i}] at {steps[i].at:g} s comes before steps[{i - 1}] "
                                 f"at {steps[i - 1].at:g} s: list steps in time order")
        return steps

    def room_description(self) -> RoomDescription:
        if isinstance(self.room, RoomDescription):
            return self.room
        path = ROOMS_DIR / f"{self.room}.json"
        if not path.is_file():
            raise ValueError(f"room {self.room!r}: no such shipped room ({path})")
        return load_description(path)


def parse_scenario(text: str | bytes, where: str = "<scenario>") -> Scenario:
    """The scenario, or ValueError in one line naming the file and the place."""
    try:
        data = strict_loads(text, max_depth=MAX_DEPTH, max_bytes=MAX_BYTES)
    except JsonInputError as exc:
        raise ValueError(f"{where}: not a scenario: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a scenario is a JSON object")  # noqa: TRY004 - refused input
    try:
        scenario = Scenario.model_validate(data)
        scenario.room_description()
    except ValidationError as exc:
        raise ValueError(one_line(exc, f"{where}: ")) from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return scenario


def load_scenario(path: Path) -> Scenario:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_scenario(raw, str(path))


def shipped() -> list[Path]:
    """The scenario library shipped with the simulator."""
    return sorted(SCENARIOS_DIR.glob("*.json"))


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def schema_text() -> str:
    schema = Scenario.model_json_schema(by_alias=True)
    # An inline room is a room description: point at its own schema rather than
    # copying it, so the two schemas cannot disagree.
    defs: dict[str, Any] = schema["$defs"]
    defs["RoomDescription"] = {"$ref": "sim-room.schema.json",
                               "description": "an inline simulated room description"}
    reachable: set[str] = set()
    todo = _refs({k: v for k, v in schema.items() if k != "$defs"})
    while todo:
        name = todo.pop()
        if name not in reachable and name in defs:
            reachable.add(name)
            todo |= _refs(defs[name])
    schema["$defs"] = {k: v for k, v in defs.items() if k in reachable}
    schema["$id"] = "https://igrt.example/schemas/sim-scenario.schema.json"
    schema["title"] = "igrt simulated room scenario"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    return schema_main("python -m sim.scenario", SCHEMA_PATH, schema_text, argv)


if __name__ == "__main__":
    raise SystemExit(main())
