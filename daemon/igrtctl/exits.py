"""igrtctl's exit codes, usage errors and argument parser: one of each for every subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import NoReturn


class ExitCode(IntEnum):
    """How an igrtctl command ended; the same number means the same thing everywhere."""

    OK = 0  # done: the command ran, the plan or registration is usable, the audit log is intact
    # igrtd answered "no" (any ErrorCode: refused, forbidden, unauthenticated, bad_args,
    # internal, ...), or a hold or jog ended without arriving (stopped, released by Ctrl-C)
    REFUSED = 1
    USAGE = 2  # unusable input: options, files, keys, registries; nothing was sent
    # the plan, proposal or registration was computed and its verdict is "refused"
    # (the report says why): plan, propose, register, register2d, register4d
    VERDICT_REFUSED = 3
    UNREACHABLE = 4  # igrtd or the MQTT broker could not be reached, or did not answer in time
    AUDIT_DAMAGED = 5  # audit verify/show found a tampered or damaged record


MEANING = {
    ExitCode.OK: "done",
    ExitCode.REFUSED: "igrtd refused the command (any error code), or a hold or jog "
                      "ended without arriving",
    ExitCode.USAGE: "unusable input (options, files, keys); nothing was sent",
    ExitCode.VERDICT_REFUSED: "the plan, proposal or registration verdict is refused "
                              "(the report says why)",
    ExitCode.UNREACHABLE: "igrtd or the MQTT broker not reachable, or no answer in time",
    ExitCode.AUDIT_DAMAGED: "the audit log is tampered or damaged",
}
EXIT_CODES_HELP = "exit status (the same for every subcommand):\n" + "\n".join(
    f"  {code.value}  {code.name:<16} {MEANING[code]}" for code in ExitCode
) + "\nerrors are one line on stderr, never a traceback."


class UsageError(Exception):
    """Input igrtctl cannot use; str() is the one-line message (exit USAGE)."""


class Unreachable(Exception):
    """igrtd or the broker cannot be reached; str() is the one-line message (exit UNREACHABLE)."""


class ArgParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, no usage dump) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def err(message: str, prog: str = "igrtctl") -> None:
    """One line on stderr, whatever the message held."""
    sys.stderr.write(f"{prog}: {' '.join(message.split())}\n")


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its type's name when it has none.

    A ValueError from reading a file (SimpleITK, pydicom, numpy) may carry a
    multi-line message; the first line names the problem.
    """
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def usage_exit(body: Callable[[], int]) -> int:
    """Run an offline tool (register, reg show, register2d/4d): its own exit
    code, or USAGE with one line on stderr when the input is unusable
    (UsageError, or a ValueError from reading or checking it)."""
    try:
        return body()
    except UsageError as exc:
        err(str(exc))
    except ValueError as exc:
        err(first_line(exc))
    return ExitCode.USAGE
