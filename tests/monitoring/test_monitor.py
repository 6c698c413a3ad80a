"""The async intrafraction monitor (daemon/monitoring.py) with a fake beam-hold sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from daemon.monitoring import IntrafractionMonitor, ReleaseDeferred
from imaging.tracking import KvFrame, TargetEstimate
from safety.beam_hold import BeamHoldPolicy, CouchTrackingLimits, CouchTrackingSuggestion

from .conftest import Timeline, frame_at, position_estimate

REF = (10.0, -5.0, 2.0)
IN = (10.5, -5.0, 2.0)
OUT = (14.5, -5.0, 2.0)  # 4.5 mm along X


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(tl: Timeline, clock: VirtualClock | None = None, **kw: object) -> IntrafractionMonitor:
    m = IntrafractionMonitor(position_estimate, tl.set_beam_hold, BeamHoldPolicy(), tl.audit, REF,
                             estimate_in_thread=False, clock=clock or VirtualClock(), **kw)  # type: ignore[arg-type]
    m.start(0.0)
    return m


async def feed_seq(m: IntrafractionMonitor, clock: VirtualClock,
                   seq: list[tuple[float, tuple[float, float, float] | None]]) -> None:
    for i, (t, p) in enumerate(seq):
        clock.t = t
        await m.feed(frame_at(t, p, i))


async def test_drift_beyond_tolerance_commands_beam_hold() -> None:
    tl, clock = Timeline(), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT)])
    assert tl.sink_writes() == [True]
    assert m.hold and m.beam_hold_acknowledged is True


async def test_back_within_tolerance_commands_release() -> None:
    tl, clock = Timeline(), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT), (0.4, IN), (0.6, IN), (0.7, IN)])
    assert tl.sink_writes() == [True, False]
    assert [e.event for e in m.events] == ["beam_hold", "beam_release"]


async def test_beam_hold_is_written_before_it_is_audited() -> None:
    tl, clock = Timeline(), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT)])
    kinds = [(e[0], e[1]) for e in tl.entries if e[:2] != ("audit", "monitor_start")]
    assert kinds == [("sink", True), ("audit", "beam_hold")]


async def test_hold_audit_records_deviation_frame_and_reason() -> None:
    tl, clock = Timeline(), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT)])
    details = next(e[2] for e in tl.entries if e[:2] == ("audit", "beam_hold"))
    assert details["deviation_mm"] == [4.5, 0.0, 0.0]
    assert details["frame_id"] == 2 and details["cause"] == "deviation"
    assert "debounce 0.2 s" in details["reason"]


async def test_hold_is_published_to_consoles_after_the_audit() -> None:
    tl, clock = Timeline(), VirtualClock()
    published: list[dict[str, object]] = []
    m = make(tl, clock, publish=published.append)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT)])
    assert [p["event"] for p in published] == ["beam_hold"]


async def test_short_excursion_commands_nothing() -> None:
    tl, clock = Timeline(), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.25, IN), (0.3, IN)])
    assert tl.sink_writes() == []


async def test_frames_without_an_estimate_hold_the_beam_after_the_max_image_age() -> None:
    tl, clock = Timeline(), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN)] + [(0.2 + 0.1 * k, None) for k in range(6)])
    assert tl.sink_writes() == [True]
    assert m.events[0].cause == "stale"


async def test_failing_estimator_counts_as_no_estimate_and_fails_safe() -> None:
    def broken(frame: KvFrame) -> TargetEstimate:
        raise RuntimeError("bug")

    tl, clock = Timeline(), VirtualClock()
    m = IntrafractionMonitor(broken, tl.set_beam_hold, BeamHoldPolicy(max_image_age_s=0.2),
                             tl.audit, REF, estimate_in_thread=False, clock=clock)
    m.start(0.0)
    await feed_seq(m, clock, [(0.1, IN), (0.2, IN), (0.3, IN)])
    assert tl.sink_writes() == [True]
    assert "estimate failed" in m.records[0].reason


async def test_failed_write_is_audited_once_and_retried_until_it_succeeds() -> None:
    tl, clock = Timeline(fail_writes=2), VirtualClock()
    m = make(tl, clock)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT), (0.35, OUT)])
    assert tl.sink_writes() == []  # two failures so far
    assert tl.events().count("beam_hold_write_failed") == 1
    await m.tick()
    assert tl.sink_writes() == [True] and m.beam_hold_acknowledged is True


async def test_stopped_image_stream_holds_through_the_watchdog() -> None:
    tl = Timeline()
    policy = BeamHoldPolicy(max_image_age_s=0.1)
    m = IntrafractionMonitor(position_estimate, tl.set_beam_hold, policy, tl.audit, REF,
                             estimate_in_thread=False)

    async def two_frames_then_silence() -> AsyncIterator[KvFrame]:
        for i in range(2):
            yield frame_at(time.monotonic(), IN, i)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)  # the imager stops delivering, the beam is still on

    m.start()
    await m.run(two_frames_then_silence())
    assert tl.sink_writes() == [True]
    assert m.events[0].cause == "stale" and m.events[0].frame_id is None


async def test_only_the_newest_frame_is_processed_when_estimates_are_slow() -> None:
    tl = Timeline()

    def slow(frame: KvFrame) -> TargetEstimate:
        time.sleep(0.05)
        return position_estimate(frame)

    m = IntrafractionMonitor(slow, tl.set_beam_hold, BeamHoldPolicy(max_image_age_s=2.0),
                             tl.audit, REF)

    async def burst() -> AsyncIterator[KvFrame]:
        for i in range(10):
            yield frame_at(time.monotonic(), IN, i)
            await asyncio.sleep(0.005)

    m.start()
    await m.run(burst())
    assert m.frames_skipped > 0
    assert m.records[-1].frame_id == 9
    ids = [r.frame_id for r in m.records]
    assert ids == sorted(ids)


async def test_the_monitor_holds_no_couch_and_offers_no_motion_api() -> None:
    tl = Timeline()
    m = make(tl)
    names = {n.lower() for n in vars(m)} | {n.lower() for n in dir(type(m))}
    assert not any("couch" in n and n != "couch_tracking" for n in names)
    assert not any(n.startswith(("move", "jog", "go")) for n in names)
    assert m.couch_tracking is None  # tracking is off by default


async def test_couch_tracking_only_hands_a_bounded_suggestion_to_the_daemon() -> None:
    tl, clock = Timeline(), VirtualClock()
    got: list[CouchTrackingSuggestion] = []
    small_out = (REF[0] + 3.5 * 0.6, REF[1], REF[2] + 3.5 * 0.8)  # 3.5 mm: out, but > 2 mm step
    m = make(tl, clock, couch_tracking=CouchTrackingLimits(max_step_mm=4.0),
             on_tracking_suggestion=got.append)
    await feed_seq(m, clock, [(0.1, IN), (0.2, small_out), (0.3, small_out)])
    assert len(got) == 1
    assert (got[0].delta_lat, got[0].delta_vert) == pytest.approx((-2.1, -2.8))
    assert "couch_tracking_suggestion" in tl.events()


async def test_couch_tracking_beyond_its_step_limit_is_refused_and_audited() -> None:
    tl, clock = Timeline(), VirtualClock()
    got: list[CouchTrackingSuggestion] = []
    m = make(tl, clock, couch_tracking=CouchTrackingLimits(), on_tracking_suggestion=got.append)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT)])
    assert got == [] and "couch_tracking_refused" in tl.events()


def test_couch_tracking_without_a_receiver_is_a_configuration_error() -> None:
    tl = Timeline()
    with pytest.raises(ValueError, match="nothing receives"):
        IntrafractionMonitor(position_estimate, tl.set_beam_hold, BeamHoldPolicy(), tl.audit, REF,
                             couch_tracking=CouchTrackingLimits())


async def test_feed_before_start_is_refused() -> None:
    tl = Timeline()
    m = IntrafractionMonitor(position_estimate, tl.set_beam_hold, BeamHoldPolicy(), tl.audit, REF)
    with pytest.raises(RuntimeError, match="not started"):
        await m.feed(frame_at(0.0, IN))


async def test_a_deferred_release_keeps_the_beam_held_and_is_asked_again_on_each_tick() -> None:
    """A sink that may not release yet (a between-beam correction under way) is not a
    failed write: the beam stays held, one audit line says why, the release is retried."""
    tl, clock = Timeline(), VirtualClock()
    allowed = False

    async def sink(hold: bool) -> None:
        if not hold and not allowed:
            raise ReleaseDeferred("between-beam correction under way")
        await tl.set_beam_hold(hold)

    m = IntrafractionMonitor(position_estimate, sink, BeamHoldPolicy(), tl.audit, REF,
                             estimate_in_thread=False, clock=clock)
    m.start(0.0)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT), (0.4, IN), (0.6, IN), (0.7, IN),
                              (0.8, IN)])
    assert tl.sink_writes() == [True] and m.beam_hold_acknowledged is True
    assert tl.events().count("beam_release_deferred") == 1
    assert "beam_hold_write_failed" not in tl.events()
    allowed = True
    await m.tick()
    assert tl.sink_writes() == [True, False] and m.beam_hold_acknowledged is False


async def test_every_estimate_and_decision_is_told_to_the_observer() -> None:
    tl, clock = Timeline(), VirtualClock()
    seen: list[tuple[int, bool, bool]] = []
    m = make(tl, clock, on_estimate=lambda f, e, d: seen.append((f.frame_id, e.valid, d.hold)))
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT), (0.4, None)])
    assert seen == [(0, True, False), (1, True, False), (2, True, True), (3, False, True)]


async def test_a_failing_observer_never_stops_the_beam_hold() -> None:
    tl, clock = Timeline(), VirtualClock()

    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    m = make(tl, clock, on_estimate=broken)
    await feed_seq(m, clock, [(0.1, IN), (0.2, OUT), (0.3, OUT)])
    assert tl.sink_writes() == [True]
