"""Console publications held while a command that may start motion runs
(daemon/publications.py, issue 13 item 6): held, never lost or reordered, never
longer than the hold's limit, and the audit record itself is never held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fakes import fake_room

from daemon.jsontypes import JsonMapping
from daemon.publications import PublicationHold

from .helpers import ALICE, SMALL, propose


class _Sink:
    def __init__(self) -> None:
        self.out: list[str] = []

    def event(self, payload: JsonMapping) -> None:
        self.out.append(str(payload["event"]))

    def state(self) -> None:
        self.out.append("state")


def _hold(sink: _Sink, max_hold_s: float = 5.0) -> PublicationHold:
    return PublicationHold(sink.event, sink.state, max_hold_s=max_hold_s)


async def test_publications_pass_at_once_while_nothing_is_held() -> None:
    sink = _Sink()
    pubs = _hold(sink)
    pubs.event({"event": "a"})
    pubs.state()
    assert sink.out == ["a", "state"]


async def test_events_made_while_held_go_out_in_order_when_released() -> None:
    sink = _Sink()
    pubs = _hold(sink)
    release = pubs.hold()
    pubs.event({"event": "a"})
    pubs.event({"event": "b"})
    assert sink.out == []
    release()
    assert sink.out == ["a", "b"]


async def test_states_asked_for_while_held_are_published_once_after_the_events() -> None:
    sink = _Sink()
    pubs = _hold(sink)
    release = pubs.hold()
    pubs.state()
    pubs.event({"event": "a"})
    pubs.state()
    release()
    assert sink.out == ["a", "state"]


async def test_nested_holds_release_with_the_last() -> None:
    sink = _Sink()
    pubs = _hold(sink)
    outer, inner = pubs.hold(), pubs.hold()
    pubs.event({"event": "a"})
    inner()
    assert sink.out == []
    outer()
    assert sink.out == ["a"]


async def test_releasing_twice_is_harmless() -> None:
    sink = _Sink()
    pubs = _hold(sink)
    first, second = pubs.hold(), pubs.hold()
    first()
    first()  # must not release the other hold
    pubs.event({"event": "a"})
    assert sink.out == []
    second()
    assert sink.out == ["a"]


async def test_a_hold_never_released_ends_after_its_limit() -> None:
    sink = _Sink()
    pubs = _hold(sink, max_hold_s=0.05)
    release = pubs.hold()
    pubs.event({"event": "a"})
    await asyncio.sleep(0.1)
    assert sink.out == ["a"]
    pubs.event({"event": "b"})  # the expired hold holds nothing more
    assert sink.out == ["a", "b"]
    release()
    assert sink.out == ["a", "b"]


def test_outside_an_event_loop_nothing_is_held() -> None:
    sink = _Sink()
    pubs = _hold(sink)
    pubs.hold()
    pubs.event({"event": "a"})
    assert sink.out == ["a"]


async def test_the_audit_record_is_written_while_its_publication_is_held(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    heard: list[str] = []
    room.service.add_event_listener(lambda ev: heard.append(str(ev["event"])))
    release = room.service.hold_background()
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    assert room.journal.count("audit:confirmation") == 1
    assert "confirmation" not in heard
    release()
    assert "confirmation" in heard


async def test_a_motion_commands_hold_also_holds_the_background_syncs(tmp_path: Path) -> None:
    held: list[str] = []

    def hold_syncs() -> Callable[[], None]:
        held.append("held")
        return lambda: held.append("released")

    room = await fake_room(tmp_path, hold_syncs=hold_syncs)
    release = room.service.hold_background()
    assert held == ["held"]
    release()
    assert held == ["held", "released"]
