"""The command registry: every command igrtd answers, declared once.

Each `Command` names its argument model, the roles that may send it, what the
local socket asks as proof of the sender, whether it moves anything, a
one-line help text, the igrtctl words that send it, and its handler: a call
onto `daemon.api.RoomCommands`. Everything else is derived from here:

* the role table (`ALLOWED_ROLES`, checked by both front ends before anything
  reaches RoomService, which checks again),
* the argument models the MQTT verifier and the local socket validate with
  (`COMMANDS[name].args`; strict: unknown fields and NaN/Infinity refused),
* both dispatchers (`execute`, used by daemon/control.py and
  daemon/console/dispatch.py),
* the igrtctl subcommands of both transports (daemon/igrtctl/room.py),
* docs/schemas/*-args.schema.json and the command table in
  docs/console-api.md (daemon/command_docs.py; a test fails when they differ).

`execute` is also the one error model of a running command: a refusal by
RoomService (`CommandError`) or by the workflow state machine
(`TransitionRefused`) is answered with its code, anything unexpected is
reported through `on_fault` (the front end audits it) and answered
`internal`, never a dropped connection. Arguments that do not fit a
command's model are `bad_args`, except for the STOP commands (stop,
release): stop always wins, so they run with their defaults and the ignored
arguments are audited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.api import (
    Actor,
    ArmsRequest,
    CommandError,
    ImagingRequest,
    JogRequest,
    MonitorStartRequest,
    MonitorStopRequest,
    ProposeRequest,
    QaCalibrationApproveRequest,
    QaCalibrationProposeRequest,
    QaCalibrationRevertRequest,
    QaCalibrationsRequest,
    QaFinishRequest,
    QaImageRequest,
    QaMoveRequest,
    QaOverrideRequest,
    QaResultsRequest,
    QaStartRequest,
    RegisterRequest,
    Reply,
    Role,
    RoomCommands,
    SessionRequest,
)
from daemon.errors import ErrorCode, first_problem, printable
from daemon.jsontypes import JsonMapping, JsonObject
from daemon.workflow import TransitionRefused

log = logging.getLogger("igrt.commands")


# --- argument models of the commands that take no request model -------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoArgs(_Args):
    """The command takes no arguments."""


class ProposalArgs(_Args):
    """confirm, approve and hold name the proposal they act on."""

    proposal_id: str = Field(min_length=1, max_length=128)


class StopArgs(_Args):
    reason: str = Field(default="", max_length=256, description="said in the audit record")


class DiagArgs(_Args):
    bundle: bool = Field(default=False, description="also return a diagnostics bundle")


class Access(StrEnum):
    """What the local socket asks as proof of who sends a command (docs/operations.md)."""

    READ = "read"  # changes nothing, every role may run it: the claimed name is enough
    STOP = "stop"  # only takes motion away: accepted from whoever reaches the socket
    PROOF = "proof"  # signed token or the OS account mapped to the user (local_uid)


A = TypeVar("A", bound=BaseModel)
# Covariant so that the registry holds every command as a `Command[BaseModel]`
# whatever its argument model. Strictly, a handler taking a ProposalArgs does not
# take any BaseModel; it is sound here because the handler is only ever called by
# `execute` with `parse_args(command, ...)` (or `command.args()`), which is always
# an instance of that same command's `args`.
A_co = TypeVar("A_co", bound=BaseModel, covariant=True)
Handler = Callable[[RoomCommands, Actor, A_co], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Command(Generic[A_co]):
    name: str
    args: type[A_co]
    roles: frozenset[Role]
    access: Access
    help: str
    cli: str  # the igrtctl words that send it, e.g. "session open"
    handler: Handler[A_co]
    # May start or continue motion of the couch or the imager arms. The MQTT front
    # end holds the consoles' events and state while it runs (daemon/publications.py).
    moves: bool = False
    # A hold-to-run heartbeat (20 per second): the MQTT front end does not audit
    # each verified one, or they would drown the audit trail.
    heartbeat: bool = False
    # Runs as soon as it is verified, never behind another command, exempt from
    # the in-flight cap (MQTT). Only stop: release must stay behind its hold.
    immediate: bool = False


_ALL = frozenset(Role)
_OPERATORS = frozenset({Role.THERAPIST, Role.APPROVER})
# Everyone who is allowed near the couch may stop it; a viewer display may not.
_STOPPERS = frozenset({Role.THERAPIST, Role.APPROVER, Role.SERVICE})
_SERVICE = frozenset({Role.SERVICE})
# Daily QA and commissioning: physicists and service engineers (issue 16).
_QA = frozenset({Role.APPROVER, Role.SERVICE})
_PHYSICIST = frozenset({Role.APPROVER})

# Not annotated: each entry keeps its own argument model (Command[ProposalArgs], ...),
# so mypy checks each handler against its model; COMMANDS widens them.
_DECLARED = (
    Command("status", NoArgs, _ALL, Access.READ,
            "room state, session, proposal and couch pose", "status",
            lambda service, a, _x: service.status(a)),
    Command("interlocks", NoArgs, _ALL, Access.READ,
            "room interlocks as the daemon sees them", "interlocks",
            lambda service, a, _x: service.interlocks(a)),
    Command("open_session", SessionRequest, _OPERATORS, Access.PROOF,
            "open the treatment session the room is set up for", "session open",
            lambda service, a, x: service.open_session(a, x)),
    Command("close_session", NoArgs, _OPERATORS, Access.PROOF,
            "close the treatment session", "session close",
            lambda service, a, _x: service.close_session(a)),
    Command("record_imaging", ImagingRequest, _OPERATORS, Access.PROOF,
            "record that an image is acquired now (the daemon reads the couch pose)", "imaging",
            lambda service, a, x: service.record_imaging(a, x)),
    Command("register", RegisterRequest, _OPERATORS, Access.PROOF,
            "register a daily image to the planning image in igrtd", "reg run",
            lambda service, a, x: service.register(a, x)),
    Command("propose", ProposeRequest, _OPERATORS, Access.PROOF,
            "propose a couch correction from a registration", "propose",
            lambda service, a, x: service.propose(a, x)),
    Command("confirm", ProposalArgs, _OPERATORS, Access.PROOF,
            "confirm a proposal (first of two people for a large one); with its hold-to-run "
            "already held, the move starts", "confirm",
            lambda service, a, x: service.confirm(a, x.proposal_id), moves=True),
    Command("approve", ProposalArgs, frozenset({Role.APPROVER}), Access.PROOF,
            "second approval of a large correction, by another person; with its hold-to-run "
            "already held, the move starts", "approve",
            lambda service, a, x: service.approve(a, x.proposal_id), moves=True),
    Command("hold", ProposalArgs, _OPERATORS | _SERVICE, Access.PROOF,
            "hold-to-run heartbeat: the confirmed move runs while these arrive (held before "
            "the confirmation, it starts as that lands); service: QA moves only", "hold",
            lambda service, a, x: service.hold(a, x.proposal_id), moves=True, heartbeat=True),
    # release only ever takes motion enable away, so it is as open as stop.
    Command("release", NoArgs, _STOPPERS, Access.STOP,
            "let go of hold-to-run: motion stops", "release",
            lambda service, a, _x: service.release(a)),
    Command("stop", StopArgs, _STOPPERS, Access.STOP,
            "stop all motion now; latches until reset", "stop",
            lambda service, a, x: service.stop(a, x.reason), immediate=True),
    Command("reset", NoArgs, _STOPPERS, Access.PROOF,
            "leave STOPPED or FAULT (a fresh confirmation is needed)", "reset",
            lambda service, a, _x: service.reset(a)),
    # Service mode: service engineers only; the clinical workflow is locked out meanwhile.
    Command("enter_service", NoArgs, _SERVICE, Access.PROOF,
            "enter service mode", "service enter",
            lambda service, a, _x: service.enter_service(a)),
    Command("exit_service", NoArgs, _SERVICE, Access.PROOF,
            "leave service mode", "service exit",
            lambda service, a, _x: service.exit_service(a)),
    Command("jog", JogRequest, _SERVICE, Access.PROOF,
            "one hold-to-run jog step of one axis at reduced speed (service mode)", "jog",
            lambda service, a, x: service.jog(a, x), moves=True),
    Command("diag", DiagArgs, _SERVICE, Access.PROOF,
            "device self-test, optionally a diagnostics bundle", "diag",
            lambda service, a, x: service.diag(a, bundle=x.bundle)),
    # Intrafraction monitoring (beam on / beam off) is run by the treating staff.
    Command("monitor_start", MonitorStartRequest, _OPERATORS, Access.PROOF,
            "beam on: monitor the target, hold the beam on drift", "monitor start",
            lambda service, a, x: service.monitor_start(a, x)),
    Command("monitor_stop", MonitorStopRequest, _OPERATORS, Access.PROOF,
            "beam off: end monitoring (a beam hold stays unless released)", "monitor stop",
            lambda service, a, x: service.monitor_stop(a, x)),
    Command("monitor_status", NoArgs, _ALL, Access.READ,
            "intrafraction monitoring state", "monitor status",
            lambda service, a, _x: service.monitor_status(a)),
    Command("arms", ArmsRequest, _STOPPERS, Access.PROOF,
            "kV imager arms: extend for imaging, retract to park", "arms",
            lambda service, a, x: service.arms(a, x), moves=True),
    # Daily QA and commissioning (docs/qa.md): a QA move is proposed and confirmed by
    # qa_move and run by `hold` through the MotionGate like any correction.
    Command("qa_start", QaStartRequest, _QA, Access.PROOF,
            "open a QA session (no clinical session open); QA home = the couch pose now",
            "qa start", lambda service, a, x: service.qa_start(a, x)),
    Command("qa_image", QaImageRequest, _QA, Access.PROOF,
            "a QA phantom image: the baseline's BB (iso offset), later ones registered to it",
            "qa image", lambda service, a, x: service.qa_image(a, x)),
    Command("qa_move", QaMoveRequest, _QA, Access.PROOF,
            "a QA couch move within the QA envelope, confirmed by the sender; hold runs it",
            "qa move", lambda service, a, x: service.qa_move(a, x)),
    Command("qa_finish", QaFinishRequest, _QA, Access.PROOF,
            "evaluate, store and close the QA session (or abort it with a reason)",
            "qa finish", lambda service, a, x: service.qa_finish(a, x)),
    Command("qa_results", QaResultsRequest, _ALL, Access.READ,
            "stored QA results of this room, newest first", "qa results",
            lambda service, a, x: service.qa_results(a, x)),
    Command("qa_override", QaOverrideRequest, _PHYSICIST, Access.PROOF,
            "let clinical corrections through without a passed daily QA, for this session only",
            "qa override", lambda service, a, x: service.qa_override(a, x)),
    Command("qa_calibration_propose", QaCalibrationProposeRequest, _PHYSICIST, Access.PROOF,
            "propose a calibration from stored QA results (applies once approved)",
            "qa cal-propose", lambda service, a, x: service.qa_calibration_propose(a, x)),
    Command("qa_calibration_approve", QaCalibrationApproveRequest, _PHYSICIST, Access.PROOF,
            "second approval of a proposed calibration, by another physicist: it becomes active",
            "qa cal-approve", lambda service, a, x: service.qa_calibration_approve(a, x)),
    Command("qa_calibration_revert", QaCalibrationRevertRequest, _PHYSICIST, Access.PROOF,
            "return to an earlier approved calibration, or (version 0) to none",
            "qa cal-revert", lambda service, a, x: service.qa_calibration_revert(a, x)),
    Command("qa_calibrations", QaCalibrationsRequest, _ALL, Access.READ,
            "calibration versions of this room and the active one", "qa cal-list",
            lambda service, a, x: service.qa_calibrations(a, x)),
)

COMMANDS: Mapping[str, Command[BaseModel]] = {c.name: c for c in _DECLARED}
if len(COMMANDS) != len(_DECLARED):  # pragma: no cover - a declaration error, caught at import
    raise RuntimeError("a command is declared twice in daemon/commands.py")

# The command names as a type: pydantic validates `cmd` of a signed command
# against it and publishes the list in the command-claims schema. mypy cannot
# read a Literal built at run time, so it sees `str`.
if TYPE_CHECKING:
    CommandName = str
else:
    CommandName = Literal[tuple(COMMANDS)]

ALLOWED_ROLES: Mapping[str, frozenset[Role]] = {c.name: c.roles for c in _DECLARED}
ARGS_MODELS: Mapping[str, type[BaseModel]] = {c.name: c.args for c in _DECLARED}


def may(role: Role, cmd: str) -> bool:
    """Whether `role` may send `cmd`; an unknown command is allowed to nobody."""
    command = COMMANDS.get(cmd)
    return command is not None and role in command.roles


def allowed_roles(cmd: str) -> list[str]:
    command = COMMANDS.get(cmd)
    return sorted(r.value for r in command.roles) if command is not None else []


def access(cmd: str) -> Access:
    """Proof the local socket asks for `cmd`; an unknown command asks the most."""
    command = COMMANDS.get(cmd)
    return command.access if command is not None else Access.PROOF


# --- the dispatcher ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one command: a result, or a code from ErrorCode and one line."""

    ok: bool
    result: Reply | None = None
    code: ErrorCode | None = None
    reason: str | None = None

    @classmethod
    def refused(cls, code: ErrorCode, reason: str) -> Answer:
        return cls(ok=False, code=code, reason=printable(reason))

    def local_reply(self) -> JsonObject:
        """The local socket's reply line (and what every igrtctl client's `call` returns)."""
        if self.ok:
            return {"ok": True, "result": self.result}
        return {"ok": False, "error": self.reason, "code": self.code}


AuditFn = Callable[[str, str, JsonObject], None]
FaultFn = Callable[[BaseException], None]


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return printable(f"{type(exc).__name__}: {text}")[:200]


def parse_args(command: Command[A], raw: JsonMapping | BaseModel) -> A:
    """`raw` as the command's argument model; ValidationError when it does not fit."""
    if isinstance(raw, command.args):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    return command.args.model_validate(raw)


@dataclass(frozen=True, slots=True)
class CommandRun:
    """One command as the dispatcher ran it (any front end), for its listeners."""

    started: float  # time.monotonic() when the handler was called
    actor: Actor
    name: str
    access: Access
    args: JsonObject  # the validated arguments, as the argument model spells them
    answer: Answer


CommandListener = Callable[[CommandRun], None]


class CommandListeners:
    """Who hears of every command that reached a handler, on every front end.

    igrtd's session recorder listens here, so that a recording holds each command
    with the arguments and the answer the room gave. A listener runs after the
    answer is decided and cannot change it; one that fails is logged and skipped.
    """

    def __init__(self) -> None:
        self._listeners: list[CommandListener] = []

    def add(self, listener: CommandListener) -> None:
        self._listeners.append(listener)

    def notify(self, run: CommandRun) -> None:
        for listener in self._listeners:
            try:
                listener(run)
            except Exception:  # a listener must never change or lose the answer
                log.exception("command listener failed for %s", run.name)


async def execute(service: RoomCommands, actor: Actor, name: str,
                  raw_args: JsonMapping | BaseModel, *,
                  audit: AuditFn, on_fault: FaultFn,
                  listeners: CommandListeners | None = None) -> Answer:
    """Run one command for `actor` on either front end; never raises (but cancellation).

    The front end has authenticated `actor`; this checks the role (defence in
    depth: RoomService authorises again), validates the arguments, runs the
    handler and turns every way it can end into an `Answer`. `listeners` hear
    of every command that reached its handler, with its answer.
    """
    command = COMMANDS.get(name)
    if command is None:
        return Answer.refused(ErrorCode.BAD_REQUEST, f"unknown command {name!r}")
    if actor.role not in command.roles:
        roles = ", ".join(allowed_roles(name))
        _audit(audit, "reject", actor.user, {"command": name, "via": actor.via,
                                            "reason": f"role {actor.role} not allowed"})
        return Answer.refused(ErrorCode.FORBIDDEN,
                              f"{name} needs role {roles}; {actor.user} is {actor.role}")
    try:
        args = parse_args(command, raw_args)
    except ValidationError as exc:
        problem = f"{name} args: {first_problem(exc, 'args')}"
        if command.access is not Access.STOP:
            return Answer.refused(ErrorCode.BAD_ARGS, problem)
        # Stop always wins: an argument it cannot read (a reason too long, an
        # unknown field) must not keep the couch moving. It runs with its
        # defaults; what was ignored is audited.
        _audit(audit, "reject", actor.user, {"command": name, "via": actor.via,
                                            "reason": f"{problem}; run without them"})
        args = command.args()
    started = time.monotonic()
    answer = await _run_handler(service, actor, name, command, args, audit, on_fault)
    if listeners is not None:
        listeners.notify(CommandRun(started, actor, name, command.access,
                                    _as_json(args.model_dump(mode="json")), answer))
    return answer


def _as_json(value: object) -> JsonObject:
    # model_dump(mode="json") gives JSON-compatible values; the check only satisfies the type
    return value if isinstance(value, dict) else {}


async def _run_handler(service: RoomCommands, actor: Actor, name: str, command: Command[A],
                       args: A, audit: AuditFn, on_fault: FaultFn) -> Answer:
    try:
        result = await command.handler(service, actor, args)
    except CommandError as exc:  # RoomService refused, and audited why
        return Answer.refused(exc.code, exc.reason)
    except TransitionRefused as exc:
        # The state machine refused a transition the service did not check for
        # first: nothing happened, so it is a refusal like any other, audited.
        _audit(audit, "reject", actor.user, {"command": name, "via": actor.via,
                                            "reason": _one_line(exc)})
        return Answer.refused(ErrorCode.REFUSED, f"{name} refused: {exc}")
    except Exception as exc:  # the sender gets an answer and the daemon keeps serving
        log.exception("command %s failed unexpectedly", name)
        try:
            on_fault(exc)
        except Exception:  # a failing audit must not turn the answer into a dropped line
            log.exception("reporting the failure of %s failed", name)
        return Answer.refused(ErrorCode.INTERNAL,
                              f"internal error while running {name} ({type(exc).__name__}); "
                              "see the igrtd log")
    return Answer(ok=True, result=result if isinstance(result, dict) else {"value": result})


def _audit(audit: AuditFn, event: str, actor: str, details: JsonObject) -> None:
    try:
        audit(event, actor, details)
    except Exception:  # auditing failure is logged loudly, the verdict stands
        log.exception("audit of %s failed", event)
