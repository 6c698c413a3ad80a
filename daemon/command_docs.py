"""Documents generated from the command registry, and the check that they are current.

    python -m daemon.command_docs --write     # rewrite docs/schemas and the tables
    python -m daemon.command_docs --check     # exit 1 naming what is stale

What is generated: every JSON Schema in docs/schemas/ (the `*-args` ones from
the registry's argument models), the command table in docs/console-api.md
and the local-proof and igrtctl exit-code tables in docs/operations.md. Each table sits between
`<!-- generated: NAME -->` and `<!-- end generated: NAME -->` lines, so the
prose around it stays hand-written. tests/test_command_registry.py fails
when any of them disagrees with daemon/commands.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from daemon.commands import COMMANDS, Access, Command
from daemon.console.schemas import schema_documents
from daemon.igrtctl.exits import MEANING, ExitCode

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = Path("docs/schemas")
CONSOLE_API = Path("docs/console-api.md")
OPERATIONS = Path("docs/operations.md")


def _args_cell(c: Command[BaseModel]) -> str:
    fields = list(c.args.model_fields)
    names = ", ".join(f"`{f}`" for f in fields) if fields else "none"
    return f"{names} ([schema](schemas/{c.name}-args.schema.json))"


def command_table() -> str:
    """The command table of docs/console-api.md, one row per registered command."""
    rows = ["| cmd | args | roles allowed | moves | local socket proof | igrtctl | what it does |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in COMMANDS.values():
        roles = ", ".join(sorted(r.value for r in c.roles))
        rows.append(f"| `{c.name}` | {_args_cell(c)} | {roles} | {'yes' if c.moves else 'no'} "
                    f"| {c.access.value} | `igrtctl {c.cli}` | {c.help} |")
    return "\n".join(rows)


_PROOF_RULES = {
    Access.PROOF: "proof required. No proof: refused with code `unauthenticated`; a proof of "
                  "someone else (the uid is mapped to alice, the request names bob): refused "
                  "with `forbidden`. Both are audited (`reject`, with the claimed user and the "
                  "uid)",
    Access.READ: "the claimed name is taken: every role may run them, so a false name gains "
                 "nothing but a wrong audit line, and the audit line says "
                 "`local:claimed <user> by uid=N`",
    Access.STOP: "accepted from whoever can reach the socket: stop always wins. The audit "
                 "record names the claimed user and, in `via`, what was proven "
                 "(`local:uid=N (alice)`, `local:key by uid=N`, or "
                 "`local:claimed bob by uid=N (alice)`)",
}


def proof_table() -> str:
    """The table of docs/operations.md saying which local commands need a proof."""
    rows = ["| commands | rule |", "| --- | --- |"]
    for access in (Access.PROOF, Access.READ, Access.STOP):
        names = ", ".join(f"`{c.name}`" for c in COMMANDS.values() if c.access is access)
        rows.append(f"| {names} | {_PROOF_RULES[access]} |")
    rows.append("| `whoami` | answered by the socket itself: the room name and how igrtd sees "
                "the connection (`igrtctl whoami`) |")
    return "\n".join(rows)


def exit_code_table() -> str:
    """igrtctl's exit codes (daemon/igrtctl/exits.py), as `igrtctl --help` lists them."""
    rows = ["| exit | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {code.value} | `{code.name}` | {MEANING[code]} |" for code in ExitCode]
    return "\n".join(rows)


TABLES: dict[Path, dict[str, Callable[[], str]]] = {
    CONSOLE_API: {"commands": command_table},
    OPERATIONS: {"local-proof": proof_table, "exit-codes": exit_code_table},
}


def with_tables(text: str, tables: dict[str, Callable[[], str]], where: str) -> str:
    """`text` with each generated block replaced; ValueError if a marker is missing."""
    for name, make in tables.items():
        begin, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"{where}: no {begin} ... {end} block")
        text = text[:start + len(begin)] + "\n" + make() + "\n" + text[stop:]
    return text


def problems(root: Path = REPO) -> list[str]:
    """Every way the committed docs disagree with the registry; empty when current."""
    found: list[str] = []
    expected = schema_documents()
    directory = root / SCHEMA_DIR
    committed = {p.name: p.read_text() for p in directory.glob("*.schema.json")}
    for name in sorted(expected.keys() - committed.keys()):
        found.append(f"{SCHEMA_DIR / name}: missing")
    for name in sorted(committed.keys() - expected.keys()):
        found.append(f"{SCHEMA_DIR / name}: no such message or command any more")
    for name in sorted(expected.keys() & committed.keys()):
        if expected[name] != committed[name]:
            found.append(f"{SCHEMA_DIR / name}: stale")
    for doc, tables in TABLES.items():
        text = (root / doc).read_text()
        try:
            if with_tables(text, tables, str(doc)) != text:
                found.append(f"{doc}: generated table is stale")
        except ValueError as exc:
            found.append(str(exc))
    return found


def write(root: Path = REPO) -> list[Path]:
    """Rewrite every generated document under `root`; returns the files written."""
    directory = root / SCHEMA_DIR
    directory.mkdir(parents=True, exist_ok=True)
    expected = schema_documents()
    written = []
    for stale in directory.glob("*.schema.json"):
        if stale.name not in expected:
            stale.unlink()
    for name, text in expected.items():
        (directory / name).write_text(text)
        written.append(directory / name)
    for doc, tables in TABLES.items():
        path = root / doc
        path.write_text(with_tables(path.read_text(), tables, str(doc)))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daemon.command_docs",
                                 description="docs generated from daemon/commands.py")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated docs")
    mode.add_argument("--check", action="store_true", help="exit 1 if any is stale")
    a = ap.parse_args(argv)
    if a.write:
        for path in write():
            sys.stdout.write(f"{path.relative_to(REPO)}\n")
        return 0
    found = problems()
    for problem in found:
        sys.stderr.write(f"{problem}\n")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
