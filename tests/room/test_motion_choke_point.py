"""Every couch or imager motion leaves igrtd through daemon/motion_gate.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ["daemon", "imaging", "safety"]
MOTION_METHODS = {"send_target", "start_target", "go", "jog", "command_arms", "command_arm"}
# list.extend is everywhere; an imager arm's extend/retract is recognised by its receiver.
ARM_METHODS = {"extend", "retract"}
CHOKE_POINT = ROOT / "daemon" / "motion_gate.py"


def _motion_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value).lower()
            if receiver.endswith("gate") or receiver in ("service", "self"):
                # The choke point itself, or RoomService's commands that delegate to it.
                continue
            if node.func.attr in MOTION_METHODS or (
                node.func.attr in ARM_METHODS and "arm" in receiver
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}()")
    return found


def test_only_the_motion_gate_calls_device_motion_methods() -> None:
    offenders = []
    for pkg in PRODUCTION:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path != CHOKE_POINT:
                offenders += _motion_calls(path)
    assert offenders == [], "motion commands outside daemon/motion_gate.py: " + ", ".join(offenders)


def test_the_motion_gate_does_send_motion() -> None:
    assert {c.split(".")[-1] for c in _motion_calls(CHOKE_POINT)} >= {"start_target()", "go()"}
