"""One-line error text from values igrt did not choose.

A key or value from a hostile command, request or file may hold a newline or
other control characters; echoed verbatim into an error it would split the
one-line answer a console, log reader or audit record relies on (and could
forge a second line). Every error that quotes outside input goes through here.

`ErrorCode` is the one list of machine codes a command can be answered with,
on every front end (local socket, MQTT console) and for every command.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ValidationError


class ErrorCode(StrEnum):
    """Why a command was not run (or not completed); the `code` of every refusal.

    The values are the wire codes the front ends always used; a StrEnum so a
    code compares equal to its text in replies, audit records and tests.
    """

    # decided by RoomService (CommandError) or the workflow state machine
    REFUSED = "refused"  # the room's rules say no (state, interlocks, limits, ...)
    FORBIDDEN = "forbidden"  # the sender's role may not run the command
    # decided by a front end before anything reaches RoomService
    UNAUTHENTICATED = "unauthenticated"  # local socket: no proof of who is sending
    BAD_REQUEST = "bad_request"  # local socket: unreadable line, not a request object
    BAD_ARGS = "bad_args"  # arguments do not fit the command's model
    UNSUPPORTED = "unsupported"  # no such command
    MALFORMED = "malformed"  # a console message that is no readable signed command
    UNSIGNED = "unsigned"
    BAD_ALG = "bad_alg"
    UNKNOWN_USER = "unknown_user"
    BAD_SIGNATURE = "bad_signature"
    WRONG_ROOM = "wrong_room"
    NOT_YET_VALID = "not_yet_valid"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    UNAVAILABLE = "unavailable"  # the replay cache failed: fail closed
    BUSY = "busy"  # too many commands in flight
    RETAINED = "retained"  # an MQTT command carrying the retain flag
    OVERSIZED = "oversized"
    INTERNAL = "internal"  # an unexpected exception: audited, never a dropped connection


def printable(text: str) -> str:
    """`text` on one printable line: control characters are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_problem(exc: ValidationError, default_loc: str) -> str:
    """`loc: message (+N more)` for the first problem of a validation error, on one line."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(x) for x in first["loc"]) or default_loc
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return printable(f"{where}: {' '.join(str(first['msg']).split())}{more}")
