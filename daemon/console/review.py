"""Review images of a registration on `igrt/{room}/review/...` (retained, QoS 1).

A review is nine image messages of about 130 KB and a meta message
(docs/console-api.md, "Review images"). Encoded in the registration worker,
they are only sent from here, one at a time, each awaited, so the event loop
is never held for the whole megabyte. The images go first and the meta last:
a page that reads a meta finds its images already there (each names its
registration_id).

Only the latest review matters. One the link lost half-way is sent again
after the next connect, at most `_REVIEW_TRIES` sends in all; one whose
largest message exceeds the broker's Maximum Packet Size is never sent (the
broker would drop igrtd's link, and every console's hold-to-run with it) and
is audited as `console.review_not_published`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from daemon.console.schemas import review_topic
from daemon.console.tasks import LOGGER, GuardedTasks, Publish
from imaging.review_messages import ReviewMessages

log = logging.getLogger(LOGGER)

# An upper bound of what a PUBLISH packet adds to topic and payload: fixed header
# (1 + up to 4 bytes of remaining length), topic length (2), packet id (2),
# properties length (1, no properties).
_PUBLISH_OVERHEAD = 10
# Sends of one review begun before it is given up: one more after the link broke
# under it, not a reconnect loop should the review itself be what breaks the link
# (a broker that announces no packet limit but enforces one).
_REVIEW_TRIES = 2

class ReviewSender:
    """The latest review of one room, sent whole to the broker or not at all."""

    def __init__(self, room: str, publish: Publish, tasks: GuardedTasks, *,
                 connected: Callable[[], bool],
                 broker_max_packet: Callable[[], int | None]) -> None:
        self._room = room
        self._publish = publish
        self._tasks = tasks
        self._connected = connected
        self._broker_max_packet = broker_max_packet
        # The latest review, and the one whose messages need no more sending (all
        # with the broker, or too large for it): a review the link lost half-way is
        # sent again after the next connect.
        self._review: ReviewMessages | None = None
        self._review_done: ReviewMessages | None = None
        self._review_tries = 0  # of the latest review: sends begun
        self._review_turn = asyncio.Lock()

    async def publish(self, review: ReviewMessages) -> bool:
        """Make `review` the latest and send it: True when all of it reached the
        broker; otherwise it is sent again after the next connect, unless the
        broker's packet limit refuses it."""
        self._review = review
        self._review_tries = 0
        return await self._send(review)

    def resend_after_connect(self) -> None:
        """Called on every connect: send the latest review again if the link
        lost it half-way and it has tries left."""
        review = self._review
        if (review is not None and review is not self._review_done
                and self._review_tries < _REVIEW_TRIES):
            self._tasks.spawn(self._resend(review), "review images")

    async def _resend(self, review: ReviewMessages) -> None:
        await self._send(review)

    async def _send(self, review: ReviewMessages) -> bool:
        # One review at a time, so two registrations' images never interleave.
        async with self._review_turn:
            if review is not self._review:
                return False  # a newer registration's review follows
            if not self._connected():
                return False  # sent after the next connect
            topics = [(review_topic(self._room, i.plane, i.image), i.payload)
                      for i in review.images]
            topics.append((review_topic(self._room), review.meta))
            limit = self._broker_max_packet()
            largest = max(len(t) + len(p) for t, p in topics) + _PUBLISH_OVERHEAD
            if limit is not None and largest > limit:
                self._review_done = review  # it would not fit after a reconnect either
                log.error("review images of registration %s not published: a message of "
                          "%d bytes exceeds the broker's max_packet_size %d (see "
                          "systemd/mosquitto/mosquitto.conf)", review.registration_id,
                          largest, limit)
                self._tasks.audit("console.review_not_published", "system", {
                    "registration_id": review.registration_id, "bytes": largest,
                    "broker_max_packet": limit})
                return False
            self._review_tries += 1
            for t, payload in topics:
                if review is not self._review:
                    return False  # superseded half-way: the newer review replaces these
                # Awaited one by one (QoS 1: until the broker has it): the loop runs
                # everything else between them.
                if not await self._publish(t, payload, qos=1, retain=True):
                    return False
            self._review_done = review
            log.info("review images of registration %s published (%d bytes)",
                     review.registration_id, review.total_bytes)
            return True
