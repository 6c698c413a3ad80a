"""Review images on the broker (docs/console-api.md, "Review images"): igrtd publishes
the nine images and their meta of every successful registration, retained, QoS 1,
one message per image; never more than the broker takes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
import SimpleITK as sitk
from support.mosquitto import Mosquitto

from daemon.audit import read_records
from daemon.console.schemas import ReviewImageMessage, ReviewMetaMessage
from daemon.control import ControlClient
from imaging.review_messages import IMAGES, PLANES, ReviewImage, ReviewMessages, ReviewRequest
from imaging.review_slices import ReviewSlices, encode_review
from sim.room import DaemonProcess, SimRoom

from .conftest import ROOM, ConsoleHarness

N = 220


def _review(registration_id: str = "reg-000000000001", room: str = ROOM) -> ReviewMessages:
    rng = np.random.default_rng(1)
    images = {(p, i): rng.integers(-1000, 2000, (N, N)).astype(np.int16)
              for p in PLANES for i in IMAGES}
    slices = ReviewSlices(images=images, matrix=tuple(tuple(r) for r in np.eye(4).tolist()),
                          iso_mm=(1.0, 2.0, 3.0), window_centre=0.0, window_width=1200.0,
                          rows=N, cols=N, pixel_mm=1.0)
    return encode_review(slices, ReviewRequest(room, registration_id, "plan", "daily"), 1.0)


def _sub(broker: Mosquitto, user: str = "console2") -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, username=user, password=broker.creds[user])


async def _collect(client: aiomqtt.Client, n: int, timeout: float = 10.0) -> list[aiomqtt.Message]:
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            out.append(m)
            if len(out) == n:
                return out
    raise AssertionError("unreachable")


def _payload(m: aiomqtt.Message) -> bytes:
    assert isinstance(m.payload, bytes)
    return m.payload


def _topics(room: str) -> list[str]:
    return [f"igrt/{room}/review/{p}/{i}" for p in PLANES for i in IMAGES]


async def test_a_review_goes_out_retained_images_first_and_meta_last(
        served: ConsoleHarness, broker: Mosquitto) -> None:
    review = _review()
    async with _sub(broker) as live:
        await live.subscribe(f"igrt/{ROOM}/review/#", qos=1)
        assert await served.console.publish_review(review)
        got = await _collect(live, 10)
    # A page that reads the meta finds its nine images already there.
    assert [m.topic.value for m in got] == [*_topics(ROOM), f"igrt/{ROOM}/review/meta"]
    assert all(m.qos == 1 for m in got)
    async with _sub(broker) as late:  # a page opened later gets them from the broker
        await late.subscribe(f"igrt/{ROOM}/review/#", qos=1)
        kept = await _collect(late, 10)
    assert all(m.retain for m in kept)
    by_topic = {m.topic.value: _payload(m) for m in kept}
    assert by_topic[f"igrt/{ROOM}/review/meta"] == review.meta
    for img in review.images:
        assert by_topic[f"igrt/{ROOM}/review/{img.plane}/{img.image}"] == img.payload
    assert served.links == [True]


async def test_a_review_too_large_for_the_broker_is_left_unsent_and_the_link_stays(
        served: ConsoleHarness, broker: Mosquitto) -> None:
    # Mosquitto drops a client that sends a packet above its max_packet_size, and with
    # igrtd's link every console's hold-to-run: such a message must never be sent.
    limit = served.console.broker_max_packet
    assert limit is not None and limit >= 150_000, "the broker's limit was not read"
    big = _review()
    images = (ReviewImage("axial", "fixed", b"x" * (limit + 1)), *big.images[1:])
    assert not await served.console.publish_review(
        ReviewMessages(big.registration_id, big.meta, images))
    assert [d for e, _a, d in served.audit.records if e == "console.review_not_published"]
    await asyncio.sleep(0.3)
    assert served.links == [True] and served.console.connected
    # The link still carries a review that fits.
    assert await served.console.publish_review(_review("reg-000000000002"))


async def test_a_review_made_while_the_broker_is_away_goes_out_when_it_is_back(
        served: ConsoleHarness, broker: Mosquitto) -> None:
    broker.stop()
    async with asyncio.timeout(5):
        while served.console.connected:
            await asyncio.sleep(0.01)
    review = _review("reg-000000000003")
    assert not await served.console.publish_review(review)
    broker.start()
    await served.console.wait_connected(timeout=10)
    async with _sub(broker) as late:
        await late.subscribe(f"igrt/{ROOM}/review/meta", qos=1)
        (meta,) = await _collect(late, 1)
    assert json.loads(_payload(meta))["registration_id"] == "reg-000000000003"


# --- through igrtd -----------------------------------------------------------

ISO = (8.0, -12.0, 20.0)


@pytest.fixture
def images(tmp_path: Path) -> tuple[str, str]:
    """The simulator's planning CT and a CBCT of the patient lying with a set-up error."""
    from safety.couch_model import CouchModel
    from safety.pose import Pose
    from sim.imager import acquire_cbct, planning_ct
    from sim.phantom import make_phantom
    from sim.world import PatientWorld

    phantom, rng = make_phantom(3), np.random.default_rng(3)
    world = PatientWorld.with_setup_error(ISO, "HFS", tuple(CouchModel.default().pivot),
                                          Pose(4.0, -3.0, 2.0, 1.0, 0.0, 0.0))
    cbct = acquire_cbct(phantom, world.placement, Pose(), world.pivot, world.iso,
                        world.patient_position, rng)
    fixed, moving = tmp_path / "plan.mha", tmp_path / "cbct.mha"
    sitk.WriteImage(planning_ct(phantom, rng=rng), str(fixed))
    sitk.WriteImage(cbct, str(moving))
    return str(fixed), str(moving)


@pytest.fixture
def mqtt_igrtd(broker: Mosquitto, tmp_path: Path) -> Iterator[DaemonProcess]:
    pw = tmp_path / "igrtd.mqtt.pw"
    pw.write_text(broker.creds["igrtd"])
    with SimRoom(couch_kwargs={"seed": 3}) as room:
        cfg = room.room_config(tmp_path / "state", mqtt={
            "host": broker.host, "port": broker.port, "username": "igrtd",
            "password_file": str(pw)})
        d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
        try:
            yield d
        finally:
            d.stop()


def _register(sock: Path, **args: Any) -> dict[str, Any]:
    client = ControlClient(sock, "alice")
    try:
        reply = dict(client.call("register", **args))
    finally:
        client.close()
    assert reply["ok"], reply
    return dict(reply["result"])


async def test_a_registration_in_igrtd_publishes_its_review_images(
        broker: Mosquitto, mqtt_igrtd: DaemonProcess, images: tuple[str, str]) -> None:
    fixed, moving = images
    result = await asyncio.to_thread(_register, mqtt_igrtd.socket_path, fixed=fixed,
                                     moving=moving, iso=list(ISO))
    assert result["converged"], result
    room = "demo"
    async with _sub(broker, "console1") as page:
        await page.subscribe(f"igrt/{room}/review/#", qos=1)
        got = {m.topic.value: _payload(m) for m in await _collect(page, 10, timeout=20)}
    meta = ReviewMetaMessage.model_validate_json(got.pop(f"igrt/{room}/review/meta"))
    assert meta.room == room and (meta.fixed, meta.moving) == (fixed, moving)
    # The page ties the images to a proposal by its matrix: the reply's, to the bit.
    assert meta.matrix == result["matrix"]
    assert meta.iso_mm == ISO and (meta.rows, meta.cols) == (N, N)
    assert sorted(got) == sorted(_topics(room))
    sizes = []
    for topic_name, payload in got.items():
        msg = ReviewImageMessage.model_validate_json(payload)
        assert topic_name == f"igrt/{room}/review/{msg.plane}/{msg.image}"
        assert msg.registration_id == meta.registration_id
        a = np.frombuffer(base64.b64decode(msg.data), dtype="<i2").reshape(msg.rows, msg.cols)
        assert a.shape == (N, N)
        assert (a != meta.no_data).mean() > 0.5, (msg.plane, msg.image)
        sizes.append(len(payload))
    assert max(sizes) < 140_000
    # The audit trail names the review the consoles were shown.
    regs = [r.details for r in read_records(mqtt_igrtd.state_dir / "audit")
            if r.event == "registration"]
    assert regs[-1]["registration_id"] == meta.registration_id
