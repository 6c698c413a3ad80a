"""The apply-once claim is made while TARGET is on the wire; GO needs it (issue 13,
item 6). TARGET alone moves nothing: the controller arms it for its validity, and
only a GO naming its echo moves the couch."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeStore, fake_room

from daemon.api import CommandError

from .helpers import ALICE, SMALL, propose


class ClaimedElsewhere(FakeStore):
    """A store in which every claim finds the confirmation already executed."""

    def claim_move(self, confirmation_id: str, proposal_id: str, target: object) -> bool:
        return False


class BrokenStore(FakeStore):
    def claim_move(self, confirmation_id: str, proposal_id: str, target: object) -> bool:
        raise OSError("disk full")


async def test_a_refused_claim_sends_no_go(tmp_path: Path) -> None:
    room = await fake_room(tmp_path, store=ClaimedElsewhere())
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    with pytest.raises(CommandError, match="already executed"):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("GO") == 0
    assert str(room.service.workflow.state) != "MOVING"


async def test_a_claim_that_cannot_be_written_sends_no_go(tmp_path: Path) -> None:
    room = await fake_room(tmp_path, store=BrokenStore())
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    with pytest.raises((CommandError, OSError)):
        await room.service.hold(ALICE, pid)
    assert room.journal.count("GO") == 0


async def test_the_claim_is_made_before_go_goes_out(tmp_path: Path) -> None:
    store = FakeStore()
    room = await fake_room(tmp_path, store=store)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    claims_at_go: list[int] = []
    go = room.couch.go

    async def watched_go(echo_id: int) -> None:
        claims_at_go.append(len(store.moves))
        await go(echo_id)

    room.couch.go = watched_go  # type: ignore[method-assign]
    await room.service.hold(ALICE, pid)
    assert claims_at_go == [1]
