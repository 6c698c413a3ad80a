"""A snapshot asked for again at once is the same one (the way to a GO asks three times
in a row); it never outlives a read or a millisecond, so what it says still ages."""

from __future__ import annotations

import time

from drivers.plc import RoomPlcClient
from drivers.plc_picture import SNAPSHOT_REUSE_S


async def test_a_snapshot_asked_for_again_at_once_is_the_same_one(
        client: RoomPlcClient) -> None:
    first = client.snapshot()
    assert client.snapshot() is first  # no read between: nothing could have changed


async def test_a_snapshot_is_built_afresh_once_it_is_older_than_the_reuse_limit(
        client: RoomPlcClient) -> None:
    first = client.snapshot()
    # Blocking on purpose: without an await no read comes in meanwhile.
    time.sleep(2 * SNAPSHOT_REUSE_S)  # noqa: ASYNC251
    later = client.snapshot()
    assert later is not first
    assert later.heartbeat_age_s > first.heartbeat_age_s


async def test_a_new_read_gives_a_new_snapshot(client: RoomPlcClient) -> None:
    first = client.snapshot()
    await client.fresh_snapshot(1.0)  # waits for a read sent after it was asked
    assert client.snapshot() is not first
