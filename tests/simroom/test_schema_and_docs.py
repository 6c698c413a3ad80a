"""What users read is current: the room schema, the control API document, the shipped
room, the igrt-sim entry point; and the broker the tests import is the simulator's."""

from __future__ import annotations

import tomllib

from sim import control_docs
from sim.room_description import (
    DEFAULT_ROOM,
    SCHEMA_PATH,
    ProductionConfigError,
    load_description,
    parse_description,
    schema_text,
)

from .conftest import REPO


def test_room_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == schema_text(), (
        "run: python -m sim.room_description --write-schema")


def test_control_api_document_is_generated_from_the_op_table() -> None:
    assert control_docs.DOC.read_text() == control_docs.updated(control_docs.DOC.read_text()), (
        "run: python -m sim.control_docs --write")


def test_the_shipped_room_parses_and_systemd_style_configs_are_refused() -> None:
    assert load_description(DEFAULT_ROOM).format == "igrt-sim-room/1"
    for text in ('{"state_dir": "/var/lib/igrt", "couch": {"port": "/dev/ttyS0"}}',
                 '{"couch": {"port": "/dev/ttyS0"}, "users": []}'):
        try:
            parse_description(text, "/etc/igrt/room.json")
        except ProductionConfigError as exc:
            assert "production config" in str(exc)
        else:
            raise AssertionError("a production config was accepted")


def test_igrt_sim_is_an_entry_point() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["igrt-sim"] == "sim.cli:main"


def test_tests_support_mosquitto_is_the_simulators_broker() -> None:
    from support import mosquitto

    import sim.broker

    for name in ("Mosquitto", "running_mosquitto", "free_port", "mosquitto_binary",
                 "DEFAULT_USERS", "PROJECT_CONF", "PROJECT_ACL", "REPO"):
        assert getattr(mosquitto, name) is getattr(sim.broker, name)
    assert sim.broker.PROJECT_CONF.is_file()
