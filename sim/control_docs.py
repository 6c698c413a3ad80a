"""The operation table of docs/sim-control-api.md, generated from `sim.control_ops.OPS`.

    python -m sim.control_docs --write    # after changing an operation
    python -m sim.control_docs --check    # exit 1 if the document is stale (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sim.control_ops import OPS

DOC = Path(__file__).resolve().parents[1] / "docs" / "sim-control-api.md"
BEGIN = "<!-- BEGIN GENERATED: python -m sim.control_docs --write -->"
END = "<!-- END GENERATED -->"


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else schema


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"] if p.get("type") != "null")
    if "$ref" in prop:
        target = _resolve(prop, defs)
        fields = ", ".join(target.get("properties", {}))
        return f"object {{{fields}}}"
    kind = str(prop.get("type", "any"))
    if kind == "array" and "prefixItems" in prop:
        return f"[{', '.join(_type(p, defs) for p in prop['prefixItems'])}]"
    bounds = []
    for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                     ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{sym} {prop[key]:g}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _fields(schema: dict[str, Any], defs: dict[str, Any], skip: str = "") -> list[str]:
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        if name == skip:
            continue
        note = prop.get("description", "")
        shown = json.dumps(prop.get("default"))
        default = "" if name in required else f" (default `{shown}`)"
        rows.append(f"| `{name}` | {_type(prop, defs)}{default} | {note} |")
    return rows


def render() -> str:
    out = [BEGIN, "", "| op | what it does |", "|---|---|"]
    out += [f"| `{op.name}` | {op.help} |" for op in OPS.values()]
    for op in OPS.values():
        schema = op.adapter.json_schema()
        defs = schema.get("$defs", {})
        out += ["", f"### `{op.name}`", "", op.help + "."]
        if "oneOf" in schema:
            out += ["", "| fault | arguments |", "|---|---|"]
            for variant in schema["oneOf"]:
                v = _resolve(variant, defs)
                name = v["properties"]["fault"]["const"]
                args = "; ".join(
                    f"`{n}`: {_type(p, defs)}" + (f" ({p['description']})" if "description" in p
                                                  else "")
                    for n, p in v["properties"].items() if n != "fault") or "none"
                out.append(f"| `{name}` | {args} |")
            continue
        rows = _fields(schema, defs)
        out += (["", "| argument | type | note |", "|---|---|---|", *rows] if rows
                else ["", "No arguments."])
    return "\n".join(out + ["", END])


def updated(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise ValueError(f"{DOC}: marker {BEGIN!r} missing")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise ValueError(f"{DOC}: marker {END!r} missing")
    return head + render() + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.control_docs")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    text = DOC.read_text()
    new = updated(text)
    if a.write:
        DOC.write_text(new)
        return 0
    if new != text:
        print(f"{DOC} is stale: run python -m sim.control_docs --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
