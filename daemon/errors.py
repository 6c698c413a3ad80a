"""One-line error text from values igrt did not choose.

A key or value from a hostile command, request or file may hold a newline or
other control characters; echoed verbatim into an error it would split the
one-line answer a console, log reader or audit record relies on (and could
forge a second line). Every error that quotes outside input goes through here.
"""

from __future__ import annotations

from pydantic import ValidationError


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
