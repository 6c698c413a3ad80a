"""One command registry (issue 12, item 1): every place that lists commands
agrees with daemon/commands.py, or this fails naming what is out of step."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon import command_docs
from daemon.api import Role, RoomCommands
from daemon.commands import ALLOWED_ROLES, ARGS_MODELS, COMMANDS, Access
from daemon.console import roles
from daemon.console.schemas import CommandClaims
from daemon.igrtctl.console import broker_parser
from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.main import local_parser
from daemon.igrtctl.room_cli import CLI

REPO = Path(__file__).resolve().parents[1]

# The least each igrtctl subcommand needs after its words, to show it parses.
_REQUIRED: dict[str, list[str]] = {
    "open_session": ["--patient", "P", "--plan", "1.2"],
    "record_imaging": ["1.2.3"],
    "register": ["--fixed", "ct.mha", "--moving", "cbct.mha"],
    "propose": ["reg.json", "--iso", "0,0,0", "--patient-position", "HFS"],
    "confirm": ["P1"], "approve": ["P1"], "hold": ["P1"],
    "jog": ["lat", "1.5"],
    "monitor_start": ["--marker", "1,2,3"],
    "arms": ["extend"],
    "qa_image": ["qa.mha", "--label", "baseline"],
    "qa_move": ["--target", "10,0,0,0,0,0"],
    "qa_override": ["--reason", "QA phantom broken today"],
    "qa_calibration_approve": ["2"],
    "qa_calibration_revert": ["0", "--reason", "back to no calibration"],
}


def _protocol_methods() -> set[str]:
    return {n for n in vars(RoomCommands) if not n.startswith("_") and callable(
        getattr(RoomCommands, n))}


def test_every_command_is_a_room_commands_method_and_every_method_a_command() -> None:
    assert set(COMMANDS) == _protocol_methods()


def test_room_service_offers_every_command_with_the_protocol_s_parameters() -> None:
    from daemon.service import RoomService

    for name in COMMANDS:
        offered = inspect.signature(getattr(RoomService, name)).parameters
        declared = inspect.signature(getattr(RoomCommands, name)).parameters
        assert list(offered) == list(declared), name
        assert inspect.iscoroutinefunction(getattr(RoomService, name)), name


def test_every_argument_model_refuses_unknown_fields_and_non_finite_numbers() -> None:
    for name, model in ARGS_MODELS.items():
        assert issubclass(model, BaseModel)
        assert model.model_config.get("extra") == "forbid", name
        assert model.model_config.get("allow_inf_nan") is False, name


def test_the_role_table_is_the_registry_s_and_the_console_package_only_re_exports_it() -> None:
    assert ALLOWED_ROLES == {c.name: c.roles for c in COMMANDS.values()}
    assert roles.ALLOWED_ROLES is ALLOWED_ROLES


def test_a_signed_command_may_name_exactly_the_registered_commands() -> None:
    enum = CommandClaims.model_json_schema()["properties"]["cmd"]["enum"]
    assert enum == list(COMMANDS)


def test_nothing_that_moves_is_accepted_without_proof_or_from_a_viewer() -> None:
    for c in COMMANDS.values():
        if c.moves:
            assert c.access is Access.PROOF and Role.VIEWER not in c.roles, c.name


def test_commands_read_without_proof_are_open_to_every_role() -> None:
    for c in COMMANDS.values():
        if c.access is Access.READ:
            assert c.roles == frozenset(Role) and not c.moves, c.name


def test_every_command_has_its_committed_args_schema() -> None:
    missing = [n for n in COMMANDS if not (REPO / f"docs/schemas/{n}-args.schema.json").is_file()]
    assert missing == []


def test_the_console_api_table_has_one_row_per_command() -> None:
    text = (REPO / "docs/console-api.md").read_text()
    text = text[text.index("<!-- generated: commands -->"):
                text.index("<!-- end generated: commands -->")]
    rows = re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE)
    assert rows == list(COMMANDS)


def test_generated_docs_and_schemas_are_current() -> None:
    assert command_docs.problems(REPO) == [], (
        "stale: run .venv/bin/python -m daemon.command_docs --write")


def test_a_stale_schema_and_a_missing_table_row_are_reported(tmp_path: Path) -> None:
    command_docs.write(_with_docs_copied(tmp_path))
    (tmp_path / "docs/schemas/stop-args.schema.json").write_text("{}\n")
    api = tmp_path / "docs/console-api.md"
    api.write_text(re.sub(r"^\| `arms` \|.*\n", "", api.read_text(), flags=re.MULTILINE))
    found = command_docs.problems(tmp_path)
    assert "docs/schemas/stop-args.schema.json: stale" in found
    assert "docs/console-api.md: generated table is stale" in found


def _with_docs_copied(root: Path) -> Path:
    for doc in command_docs.TABLES:
        (root / doc).parent.mkdir(parents=True, exist_ok=True)
        (root / doc).write_text((REPO / doc).read_text())
    return root


def test_every_command_has_an_igrtctl_subcommand_entry() -> None:
    assert set(CLI) == set(COMMANDS)


@pytest.mark.parametrize("front", ["local socket", "mqtt"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_both_igrtctl_front_ends_offer_every_command(front: str, name: str) -> None:
    argv = COMMANDS[name].cli.split() + _REQUIRED.get(name, [])
    if front == "mqtt":
        parsed = broker_parser().parse_args(["--broker", "mqtt://c@h", *argv])
    else:
        parsed = local_parser().parse_args(argv)
    assert isinstance(parsed, argparse.Namespace) and parsed.command == name


def test_igrtctl_help_lists_every_exit_code() -> None:
    text = local_parser().format_help()
    for code in ExitCode:
        assert re.search(rf"^\s+{code.value}\s+{code.name}\s", text, flags=re.MULTILINE), code


def test_operations_doc_lists_every_exit_code() -> None:
    text = (REPO / "docs/operations.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} | `{code.name}` |" in text, code
