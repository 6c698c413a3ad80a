"""Fixtures of the real-browser tests: one Mosquitto with a websockets listener and
two simulated rooms on it (one igrtd each), the console web server, and one
headless Debian chromium per module with a browser context per person.

Everything is module scoped: the rooms start once (seconds: two igrtd, two
couch and PLC simulators) and the tests of a module run in order through one
treatment, each person keeping their page.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .stack import (
    CHROMIUM,
    NEWCOMER,
    PHYSICIST,
    THERAPIST,
    ConsoleServer,
    RoomsProcess,
    browser_missing,
    description,
    lower_browser_priority,
)

ROOMS = ("tr1", "tr2")


@pytest.fixture(scope="module")
def rooms(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[RoomsProcess]:
    # After the browser: chromium's start is a burst of CPU the rooms need not live through.
    run_dir = tmp_path_factory.mktemp("console")
    stack = RoomsProcess(run_dir, [description("tr1", seed=1), description("tr2", seed=2)],
                         [THERAPIST, PHYSICIST, NEWCOMER])
    stack.start()
    try:
        for room in ROOMS:
            settle(stack, room)
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()


def settle(stack: RoomsProcess, room: str, timeout_s: float = 10.0) -> None:
    """The room at rest in STANDBY before the people arrive. A room that latched FAULT
    while starting (a couch heartbeat missed while the machine was busy starting
    processes: the simulated controller's watchdog is 250 ms) is reset once, as the
    therapist would, and said so; the tests themselves never hide a FAULT."""
    deadline = time.monotonic() + timeout_s
    reset = False
    while True:
        reply = stack.igrtd(room, "status")
        state = reply.get("result", {}).get("state") if reply.get("ok") else None
        if state == "STANDBY":
            return
        if state == "FAULT" and not reset:
            why = reply["result"].get("reason")
            warnings.warn(f"room {room} latched FAULT while starting ({why}); reset once",
                          stacklevel=1)
            stack.igrtd(room, "reset")
            reset = True
        if time.monotonic() > deadline:
            raise RuntimeError(f"room {room} not in STANDBY after {timeout_s} s: {reply}")
        time.sleep(0.1)




@pytest.fixture(scope="module")
def console(rooms: RoomsProcess) -> Iterator[ConsoleServer]:
    # rooms null: the department view discovers them from the retained igrt/+/status.
    b = rooms.info["broker"]
    server = ConsoleServer(rooms.run_dir, b["ws_url"], None,
                           bridge=(b["host"], b["port"]))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def console_url(console: ConsoleServer) -> str:
    return console.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = browser_missing()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    from .console_page import SHOTS

    for stale in SHOTS.glob("FAILED-*.png"):  # an earlier run's failures
        stale.unlink()
    with sync_playwright() as p:
        # Debian's chromium, never a downloaded one.
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        lower_browser_priority()
        yield b
        b.close()


@pytest.fixture(scope="module")
def people(browser: Any, console: ConsoleServer, rooms: RoomsProcess) -> Iterator[dict[str, Any]]:
    """A ConsolePage per person, each in a browser context of its own (own IndexedDB,
    own MQTT connection), created on first use and kept for the module."""
    from .console_page import ConsolePage

    contexts: list[Any] = []

    class People(dict[str, ConsolePage]):
        def __missing__(self, who: str) -> ConsolePage:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            contexts.append(ctx)
            page = ConsolePage(ctx.new_page(), console.url, console.broker_url, who=who)
            lower_browser_priority()  # the new renderer process too
            self[who] = page
            return page

    people = People()
    yield people
    for ctx in contexts:
        ctx.close()


def key_file(rooms: RoomsProcess, room: str, user: str) -> Path:
    """The private JWK of a demo_key user (written by the simulated room)."""
    return Path(rooms.room(room)["key_dir"]) / f"{user}.key"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _screenshots_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test leaves each person's screen in out/console/FAILED-<test>-<who>.png."""
    yield
    if not request.node.stash.get(_FAILED, False) or "people" not in request.fixturenames:
        return
    people = request.getfixturevalue("people")
    for who, page in list(people.items()):
        try:
            page.shot(f"FAILED-{request.node.name}-{who}")
        except Exception:  # noqa: BLE001, S110 - a screenshot is a courtesy, never a second failure
            pass
