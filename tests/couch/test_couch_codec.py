"""The frame codec: round trips, CRC, resynchronisation and fuzzing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import couch_protocol as cp

INT32 = st.integers(cp.INT32_MIN, cp.INT32_MAX)
U16 = st.integers(0, 0xFFFF)
U8 = st.integers(0, 0xFF)
POSITIONS = st.tuples(INT32, INT32, INT32, INT32, INT32, INT32)

MESSAGES = st.one_of(
    st.just(cp.Heartbeat()),
    st.just(cp.StatusRequest()),
    st.just(cp.Stop()),
    st.just(cp.Reset()),
    st.builds(cp.Target, POSITIONS, U16),
    st.builds(cp.Go, U16),
    st.builds(cp.Jog, U8, INT32, U16),
    st.builds(cp.Ack, U8),
    st.builds(cp.Nak, U8, U8, U8, INT32, INT32),
    st.builds(cp.TargetEchoMsg, U16, POSITIONS, U16, POSITIONS, U8),
    st.builds(cp.Status, U8, U8, U8, U8, U16, U16, POSITIONS, U16, U16, U16,
              st.integers(0, 2**32 - 1)),
)


def frames_of(items: list[cp.Frame | cp.DecodeError]) -> list[cp.Frame]:
    return [i for i in items if isinstance(i, cp.Frame)]


def test_crc_is_ccitt_false_check_value() -> None:
    assert cp.crc16_ccitt_false(b"123456789") == 0x29B1


def test_frame_layout_matches_the_document() -> None:
    frame = cp.encode(7, cp.Go(0x0102))
    assert frame[:2] == b"\xa5\x5a"
    assert frame[2:5] == bytes([2, 7, cp.MsgType.GO])
    assert frame[5:7] == b"\x02\x01"  # little-endian echo id
    crc = cp.crc16_ccitt_false(frame[2:7])
    assert frame[7:] == bytes([crc & 0xFF, crc >> 8])


@given(st.integers(0, 255), MESSAGES)
def test_every_message_round_trips(seq: int, msg: cp.Message) -> None:
    frames = frames_of(cp.FrameDecoder().feed(cp.encode(seq, msg)))
    assert len(frames) == 1
    assert frames[0].seq == seq
    assert cp.decode_message(frames[0]) == msg


def test_frame_split_across_reads_is_reassembled() -> None:
    data = cp.encode(3, cp.Target((1, 2, 3, 4, 5, 6), 500))
    dec = cp.FrameDecoder()
    out: list[cp.Frame | cp.DecodeError] = []
    for b in data:
        out += dec.feed(bytes([b]))
    assert [cp.decode_message(f) for f in frames_of(out)] == [cp.Target((1, 2, 3, 4, 5, 6), 500)]


def test_flipped_bit_is_reported_as_bad_crc_and_never_decoded() -> None:
    frame = bytearray(cp.encode(9, cp.Go(5)))
    frame[5] ^= 0x01
    dec = cp.FrameDecoder()
    out = dec.feed(bytes(frame)) + dec.flush()
    assert frames_of(out) == []
    bad = [i for i in out if isinstance(i, cp.DecodeError) and i.kind == "bad_crc"]
    assert bad and bad[0].seq == 9 and bad[0].type == cp.MsgType.GO and bad[0].plausible


def test_good_frame_after_damaged_one_is_recovered() -> None:
    damaged = bytearray(cp.encode(1, cp.Go(5)))
    damaged[-1] ^= 0xFF
    good = cp.encode(2, cp.Heartbeat())
    frames = frames_of(cp.FrameDecoder().feed(bytes(damaged) + good))
    assert [(f.seq, f.type) for f in frames] == [(2, cp.MsgType.HEARTBEAT)]


def test_impossible_length_is_skipped() -> None:
    bogus = b"\xa5\x5a\xff\x01\x02"
    frames = frames_of(cp.FrameDecoder().feed(bogus + cp.encode(4, cp.Stop())))
    assert [(f.seq, f.type) for f in frames] == [(4, cp.MsgType.STOP)]


def test_wrong_payload_length_for_type_is_a_message_error() -> None:
    frame = cp.FrameDecoder().feed(cp.encode_raw(1, cp.MsgType.GO, b"\x01"))[0]
    assert isinstance(frame, cp.Frame)
    try:
        cp.decode_message(frame)
    except cp.MessageError as exc:
        assert exc.reason == cp.NakReason.BAD_LENGTH
    else:
        raise AssertionError("a 1-byte GO payload must not decode")


def test_unknown_type_is_a_message_error() -> None:
    frame = cp.FrameDecoder().feed(cp.encode_raw(1, 0x55, b""))[0]
    assert isinstance(frame, cp.Frame)
    try:
        cp.decode_message(frame)
    except cp.MessageError as exc:
        assert exc.reason == cp.NakReason.UNKNOWN_TYPE
    else:
        raise AssertionError("type 0x55 must not decode")


def test_stop_inside_a_truncated_frame_is_found_at_once() -> None:
    truncated = cp.encode(1, cp.Target((0,) * 6, 100))[:9]  # header claims 26 bytes
    stop = cp.encode(2, cp.Stop())
    dec = cp.FrameDecoder(priority_types=frozenset({cp.MsgType.STOP}))
    frames = frames_of(dec.feed(truncated + stop))
    assert [(f.seq, f.type) for f in frames] == [(2, cp.MsgType.STOP)]


def test_pre_empted_stop_is_reported_only_once() -> None:
    truncated = cp.encode(1, cp.Target((0,) * 6, 100))[:9]
    stop = cp.encode(2, cp.Stop())
    dec = cp.FrameDecoder(priority_types=frozenset({cp.MsgType.STOP}))
    out = dec.feed(truncated + stop)
    out += dec.feed(b"\x00" * 40 + cp.encode(3, cp.Heartbeat()))  # completes the bogus frame
    out += dec.flush()
    assert [(f.seq, f.type) for f in frames_of(out)] == [
        (2, cp.MsgType.STOP), (3, cp.MsgType.HEARTBEAT)
    ]


def test_wire_units_refuse_values_that_do_not_fit() -> None:
    assert cp.to_wire(-12.5, cp.MM) == -12500
    assert cp.to_wire(1.5, cp.DEG) == 1_500_000
    for bad in (float("nan"), float("inf"), 3e6):
        try:
            cp.to_wire(bad, cp.MM, "lat", "mm")
        except ValueError as exc:
            assert "lat" in str(exc) and "mm" in str(exc)
        else:
            raise AssertionError(f"{bad} must be refused")


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=8))
def test_random_bytes_never_crash_the_decoder(data: bytes, cuts: list[int]) -> None:
    dec = cp.FrameDecoder(priority_types=frozenset({cp.MsgType.STOP}))
    pos = 0
    for c in cuts:
        dec.feed(data[pos : pos + c])
        pos += c
    dec.feed(data[pos:])
    for item in dec.flush():
        if isinstance(item, cp.Frame):
            assert len(item.payload) <= cp.MAX_PAYLOAD
    assert dec.pending_bytes == 0


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=200), st.integers(1, 255), MESSAGES, st.binary(max_size=200))
def test_valid_frame_inside_garbage_is_recovered(
    before: bytes, seq: int, msg: cp.Message, after: bytes
) -> None:
    dec = cp.FrameDecoder()
    out = dec.feed(before + cp.encode(seq, msg) + after) + dec.flush()
    decoded = [(f.seq, cp.decode_message(f)) for f in frames_of(out)
               if f.type == msg.TYPE and f.seq == seq and f.payload == msg.payload()]
    assert decoded == [(seq, msg)]
