"""Correction workflow rules (propose, confirm, approve, apply-once) on in-memory fakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeStore, fake_room

from daemon.api import CommandError
from daemon.proposals import PROPOSAL_TRANSITIONS, ProposalStatus, ProposalTransitionRefused

from .helpers import ALICE, BOB, LARGE, SMALL, propose, start_move, supervised, until


async def test_the_proposal_status_table_refuses_an_illegal_transition(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    await propose(room, SMALL)
    p = room.service.current
    assert p is not None and p.status is ProposalStatus.PROPOSED
    with pytest.raises(ProposalTransitionRefused, match="cannot go from proposed to moving"):
        p.to(ProposalStatus.MOVING)  # a move needs a confirmation first
    assert p.status is ProposalStatus.PROPOSED


def test_every_proposal_status_has_a_row_in_the_transition_table() -> None:
    assert set(PROPOSAL_TRANSITIONS) == set(ProposalStatus)
    assert all(targets <= set(ProposalStatus) for targets in PROPOSAL_TRANSITIONS.values())


async def test_a_large_correction_confirmed_by_one_person_awaits_a_second(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, LARGE)
    view = await room.service.confirm(ALICE, pid)
    assert view["status"] == "awaiting_approval"
    progress = await room.service.hold(ALICE, pid)
    assert progress["running"] is False and room.journal.count("GO") == 0


async def test_second_approval_by_the_person_who_confirmed_is_refused(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, LARGE, by=BOB)
    await room.service.confirm(BOB, pid)
    with pytest.raises(CommandError, match="another person than bob"):
        await room.service.approve(BOB, pid)
    assert str(room.service.workflow.state) == "AWAITING_APPROVAL"
    assert room.audit.events("approval") == []


async def test_a_stop_while_awaiting_approval_latches_and_spends_the_confirmation(
        tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    pid = await propose(room, LARGE)
    await room.service.confirm(ALICE, pid)
    await room.service.stop(BOB, "patient moved")
    assert str(room.service.workflow.state) == "STOPPED"
    with pytest.raises(CommandError):
        await room.service.approve(BOB, pid)  # the confirmation is spent
    await room.service.reset(ALICE)
    assert str(room.service.workflow.state) == "READY"
    assert room.journal.count("GO") == 0


async def test_a_completed_correction_is_not_confirmed_again(tmp_path: Path) -> None:
    room = await fake_room(tmp_path)
    async with supervised(room):
        pid = await start_move(room)
        active = room.service.active
        assert active is not None
        room.couch.arrive(active.started.target)
        await until(lambda: str(room.service.workflow.state) == "DONE")
    with pytest.raises(CommandError):
        await room.service.confirm(ALICE, pid)
    assert room.journal.count("GO") == 1


async def test_a_completed_correction_is_refused_after_a_restart(tmp_path: Path) -> None:
    store = FakeStore()
    room = await fake_room(tmp_path, store=store)
    async with supervised(room):
        pid = await start_move(room)
        active = room.service.active
        assert active is not None
        room.couch.arrive(active.started.target)
        await until(lambda: str(room.service.workflow.state) == "DONE")
    restarted = await fake_room(tmp_path, store=store)  # igrtd restarted: same durable store
    with pytest.raises(CommandError, match="already applied"):
        await restarted.service.confirm(ALICE, pid)
    assert restarted.journal.count("GO") == 0
