"""The broker link: presence, retained state, reconnect, ACLs, socket options,
telemetry rate, hold-to-run heartbeats, and replay protection across restart."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.api import Actor
from daemon.console.client import CommandRefused
from daemon.console.schemas import StateMessage, StatusMessage, TelemetryMessage
from daemon.store import CorrectionStore

from .conftest import ROOM, AuditLog, ConsoleHarness, FakeRoom, Identities, console_client, serving


def _sub(broker, user: str = "console2") -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, username=user, password=broker.creds[user])


async def _next(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            return m
    raise AssertionError("unreachable")


async def test_status_is_online_and_retained_while_connected(served: ConsoleHarness, broker) -> None:
    async with _sub(broker) as s:
        await s.subscribe(f"igrt/{ROOM}/status", qos=1)
        m = await _next(s)
    assert m.retain
    assert StatusMessage.model_validate_json(m.payload).status == "online"  # type: ignore[arg-type]


async def test_status_goes_offline_when_the_daemon_disconnects(
    broker, identities, fake_room, audit
) -> None:
    async with serving(broker, identities, fake_room, audit):
        pass
    async with _sub(broker) as s:
        await s.subscribe(f"igrt/{ROOM}/status", qos=1)
        m = await _next(s)
    assert StatusMessage.model_validate_json(m.payload).status == "offline"  # type: ignore[arg-type]


async def test_published_state_is_retained_for_late_subscribers(served: ConsoleHarness, broker) -> None:
    await served.console.publish_state({"room_state": "IDLE", "n": 1})
    await served.console.publish_state({"room_state": "PROPOSED", "n": 2})
    async with _sub(broker) as s:
        await s.subscribe(f"igrt/{ROOM}/state", qos=1)
        m = await _next(s)
    msg = StateMessage.model_validate_json(m.payload)  # type: ignore[arg-type]
    assert m.retain and msg.state == {"room_state": "PROPOSED", "n": 2}


async def test_broker_restart_reports_link_loss_then_reconnects_and_republishes_state(
    broker, identities, fake_room: FakeRoom, audit: AuditLog
) -> None:
    snapshot = {"room_state": "MOVING", "proposal": "p1"}
    async with serving(broker, identities, fake_room, audit, state=snapshot) as h:
        assert h.links == [True]
        broker.stop()  # broker vanishes mid-session: heartbeats cannot arrive
        async with asyncio.timeout(5):
            while h.links[-1]:
                await asyncio.sleep(0.01)
        assert not h.console.connected
        broker.start()  # persistence off: the retained state died with the broker
        await h.console.wait_connected(timeout=10)
        assert h.links == [True, False, True]
        async with _sub(broker) as s:
            await s.subscribe(f"igrt/{ROOM}/state", qos=1)
            m = await _next(s)
        assert StateMessage.model_validate_json(m.payload).state == snapshot  # type: ignore[arg-type]
        async with console_client(broker, identities) as c:
            assert (await c.status())["state"] == "IDLE"


async def test_console_account_cannot_publish_state(served: ConsoleHarness, broker) -> None:
    async with _sub(broker, "console2") as watcher, _sub(broker, "console1") as intruder:
        await watcher.subscribe(f"igrt/{ROOM}/state", qos=1)
        await served.console.publish_state({"room_state": "IDLE"})
        assert StateMessage.model_validate_json((await _next(watcher)).payload).state == {  # type: ignore[arg-type]
            "room_state": "IDLE"
        }
        await intruder.publish(f"igrt/{ROOM}/state", b'{"forged": true}', qos=1, retain=True)
        await served.console.publish_state({"room_state": "AFTER"})
        m = await _next(watcher)
    # The forged message never arrives: the next one seen is the daemon's.
    assert StateMessage.model_validate_json(m.payload).state == {"room_state": "AFTER"}  # type: ignore[arg-type]


async def _receives(client: aiomqtt.Client, timeout: float) -> bool:
    try:
        await _next(client, timeout)
    except TimeoutError:
        return False
    return True


async def test_console_account_cannot_read_other_consoles_commands(
    served: ConsoleHarness, broker, identities
) -> None:
    # Mosquitto 2 grants the subscription but filters every delivery by the ACL.
    async with _sub(broker, "console1") as snoop:
        await snoop.subscribe(f"igrt/{ROOM}/cmd", qos=1)
        async with console_client(broker, identities, console="console2") as c:
            await c.status()  # the daemon received it...
        assert not await _receives(snoop, 0.3)  # ...the other console did not


async def test_console_account_cannot_read_another_consoles_replies(
    served: ConsoleHarness, broker, identities
) -> None:
    async with _sub(broker, "console1") as snoop:
        await snoop.subscribe(f"igrt/{ROOM}/reply/console2", qos=1)
        async with console_client(broker, identities, console="console2") as c:
            await c.status()
        assert not await _receives(snoop, 0.3)


async def test_tcp_nodelay_is_set_on_both_ends(served: ConsoleHarness, broker, identities) -> None:
    async with console_client(broker, identities) as c:
        sock = c._client._client.socket()  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    server_sock = served.console._client._client.socket()  # type: ignore[union-attr]
    assert server_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_telemetry_bursts_are_coalesced_and_the_latest_sample_is_sent(
    served: ConsoleHarness, broker
) -> None:
    async with _sub(broker) as s:
        await s.subscribe(f"igrt/{ROOM}/telemetry", qos=0)
        for i in range(50):
            await served.console.publish_telemetry({"couch": {"lat": float(i)}})
        seen: list[float] = []
        async with asyncio.timeout(5):
            async for m in s.messages:
                seen.append(TelemetryMessage.model_validate_json(m.payload).couch["lat"])  # type: ignore[arg-type,index]
                if seen[-1] == 49.0:
                    break
    assert seen[0] == 0.0 and seen[-1] == 49.0
    assert len(seen) < 10  # 50 samples in a burst, at most 20 per second on the wire


async def test_events_are_published_with_schema(served: ConsoleHarness, broker) -> None:
    async with _sub(broker) as s:
        await s.subscribe(f"igrt/{ROOM}/events", qos=1)
        await served.console.publish_event("motion.stopped", "alice", {"reason": "hold released"})
        m = await _next(s)
    body = json.loads(m.payload)  # type: ignore[arg-type]
    assert (body["v"], body["event"], body["actor"]) == (1, "motion.stopped", "alice")


async def test_hold_sends_heartbeats_until_the_move_is_done_then_releases(
    served: ConsoleHarness, broker, identities
) -> None:
    served.room.holds_until_done = 6
    async with console_client(broker, identities) as c:
        result = await asyncio.wait_for(c.hold("p1", rate_hz=20), 10)
    assert result["state"] == "DONE"
    names = served.room.names()
    assert names.count("hold") >= 6 and names[-1] == "release"


async def test_cancelled_hold_releases(served: ConsoleHarness, broker, identities) -> None:
    async with console_client(broker, identities) as c:
        task = asyncio.create_task(c.hold("p1", rate_hz=20))
        async with asyncio.timeout(5):
            while served.room.names().count("hold") < 3:
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert served.room.names()[-1] == "release"


async def test_hold_below_10_hz_is_refused_locally(served: ConsoleHarness, broker, identities) -> None:
    async with console_client(broker, identities) as c:
        with pytest.raises(ValueError, match="10 Hz"):
            await c.hold("p1", rate_hz=5)
    assert served.room.calls == []


async def test_refused_hold_ends_the_loop_with_the_reason(
    served: ConsoleHarness, broker, identities
) -> None:
    async with console_client(broker, identities, user="vera") as viewer:
        with pytest.raises(CommandRefused, match="role viewer may not hold"):
            await asyncio.wait_for(viewer.hold("p1"), 5)


async def test_replay_is_refused_after_the_daemon_restarts_with_its_store(
    broker, identities: Identities, fake_room: FakeRoom, audit: AuditLog, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    async with console_client(broker, identities) as c:
        jti, token = c.sign("confirm", {"proposal_id": "p1"})
        with CorrectionStore(db) as store:
            async with serving(broker, identities, fake_room, audit, replay_cache=store):
                assert (await c.request_raw(token, jti)).ok
        with CorrectionStore(db) as store:  # a new daemon process, same state file
            async with serving(broker, identities, fake_room, audit, replay_cache=store):
                again = await c.request_raw(token, jti)
    assert (again.ok, again.code) == (False, "replayed")
    assert fake_room.names() == ["confirm"]


class _BrokenStore:
    def remember_jti(self, jti: str, exp: float) -> bool:
        raise OSError("disk full")


async def test_stop_is_accepted_even_when_the_replay_store_fails_but_confirm_is_not(
    broker, identities, fake_room: FakeRoom, audit: AuditLog
) -> None:
    async with (
        serving(broker, identities, fake_room, audit, replay_cache=_BrokenStore()),
        console_client(broker, identities) as c,
    ):
        with pytest.raises(CommandRefused, match="replay cache unavailable"):
            await c.confirm("p1")
        assert await c.stop("interlock") == {"stopped": True}
    assert fake_room.names() == ["stop"]


async def test_busy_daemon_refuses_more_commands_but_still_takes_stop(
    broker, identities, fake_room: FakeRoom, audit: AuditLog
) -> None:
    async with (
        serving(broker, identities, fake_room, audit, max_inflight_commands=1),
        console_client(broker, identities) as c,
    ):
        slow = await c.send("confirm", {"proposal_id": "slow"})
        with pytest.raises(CommandRefused) as busy:
            await c.status()
        assert busy.value.code == "busy"
        assert await c.stop("now") == {"stopped": True}
        fake_room.slow_gate.set()
        assert (await asyncio.wait_for(slow, 5)).ok




class _PublicationHolds:
    """Stands in for the room's publication hold: counts the holds in force."""

    def __init__(self) -> None:
        self.active = 0
        self.taken = 0

    def __call__(self) -> Callable[[], None]:
        self.active += 1
        self.taken += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.active -= 1
        return release


async def test_a_motion_command_holds_publications_until_its_answer_before_its_reply(
    broker, identities, fake_room: FakeRoom, audit: AuditLog
) -> None:
    holds = _PublicationHolds()
    during: list[int] = []
    confirm = fake_room.confirm

    async def held_confirm(actor: Actor, proposal_id: str) -> dict[str, Any]:
        during.append(holds.active)
        return await confirm(actor, proposal_id)

    fake_room.confirm = held_confirm  # type: ignore[method-assign]
    async with serving(broker, identities, fake_room, audit, hold_background=holds), \
            console_client(broker, identities) as c:
        await asyncio.wait_for(c.confirm("p1"), 10)
        assert during == [1]
        assert holds.active == 0  # released by the time its reply arrived


async def test_a_command_that_cannot_move_holds_no_publications(
    broker, identities, fake_room: FakeRoom, audit: AuditLog
) -> None:
    holds = _PublicationHolds()
    async with serving(broker, identities, fake_room, audit, hold_background=holds), \
            console_client(broker, identities) as c:
        await asyncio.wait_for(c.status(), 10)
    assert holds.taken == 0
