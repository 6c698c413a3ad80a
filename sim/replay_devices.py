"""Replay devices: a couch controller on a pty and a room PLC on Modbus TCP that
answer igrtd with what a recording says the real ones answered.

The clock (`ReplayClock`) starts at igrtd's first couch frame, which is aligned
with the first frame igrtd sent in the recording; every recorded time is then
a time on this clock.

Couch: a request from igrtd is matched to the next recorded request of the same
type and answered with the recorded reply, its SEQ rewritten to igrtd's.
HEARTBEAT is always ACKed. A STATUS_REQ is matched by order within the stretch
after the same decisive request (a recorded settle probe may make igrtd ask
more or fewer times; then it gets the latest state released). Pushed STATUS
frames are sent when their time comes. So that a move cannot be seen moving
before igrtd sent its GO, every recorded STATUS is anchored to the last
decisive request (TARGET, GO, STOP, RESET, JOG) before it: it is released
only after igrtd sent that request, as long after it as in the recording.

PLC: the recorded status blocks, each from its recorded time on; the heartbeat
register is the replay PLC's own counter (the recorder leaves heartbeat-only
changes out). Coil writes are kept in `writes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers import couch_protocol as cp
from drivers.plc_registers import DEFAULT_DEVICE_ID, STATUS_BLOCK_COUNT, StatusRegister
from sim.replay_load import DECISIVE, CouchFrame, Recording

log = logging.getLogger("igrt.sim.replay")
_FC_READ_HR, _FC_READ_IR, _FC_WRITE_COIL, _FC_WRITE_COILS = 3, 4, 5, 15
_MT = cp.MsgType


class ReplayClock:
    def __init__(self, first_tx_t: float) -> None:
        self._first = first_tx_t
        self._t0: float | None = None

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic() - self._first

    def now(self) -> float:
        """Replay time, comparable with recorded `t` (0 before the clock starts)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0


class _Status:
    """One recorded STATUS payload and when it may be released."""

    __slots__ = ("anchor", "anchor_kind", "anchor_t", "payload", "push", "t")

    def __init__(self, t: float, payload: bytes, push: bool, anchor: int, anchor_t: float,
                 anchor_kind: str) -> None:
        self.t, self.payload, self.push, self.anchor, self.anchor_t = t, payload, push, anchor, anchor_t
        self.anchor_kind = anchor_kind


class ReplayCouch:
    def __init__(self, recording: Recording, clock: ReplayClock) -> None:
        self.clock = clock
        self.device_path = ""
        self.received: list[CouchFrame] = []  # what igrtd sent, replay time
        self.unanswered: list[str] = []  # requests the recording has no reply for
        self._master = self._slave = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = cp.FrameDecoder()
        self._task: asyncio.Task[None] | None = None
        self._replies: dict[int, list[list[CouchFrame]]] = {}
        self._cursor: dict[int, int] = {}
        self._statuses: list[_Status] = []
        self._next_status = 0
        self._current: bytes | None = None
        self._decisive_seen: list[float] = []  # replay times of igrtd's decisive requests
        self._decisive_kinds: list[str] = []
        # STATUS replies by the decisive request before them: the n-th STATUS_REQ
        # igrtd sends after its k-th decisive request gets the n-th recorded one.
        self._status_replies: dict[int, list[bytes]] = {}
        self._status_used: dict[int, int] = {}
        self._index(recording.couch)

    def _index(self, frames: list[CouchFrame]) -> None:
        decisive, decisive_t, decisive_kind = 0, 0.0, ""
        request_anchor: dict[int, int] = {}
        open_requests: dict[int, list[CouchFrame]] = {}
        for f in frames:
            if f.dir == "tx":
                if f.kind in DECISIVE:
                    decisive, decisive_t, decisive_kind = decisive + 1, f.t, f.kind
                if f.type != _MT.HEARTBEAT:
                    replies: list[CouchFrame] = []
                    self._replies.setdefault(f.type, []).append(replies)
                    open_requests[f.seq] = replies
                    request_anchor[f.seq] = decisive
            else:
                if f.type == _MT.STATUS:
                    self._statuses.append(_Status(f.t, f.payload, f.seq == cp.UNSOLICITED_SEQ,
                                                  decisive, decisive_t, decisive_kind))
                    if f.seq != cp.UNSOLICITED_SEQ and f.seq in open_requests:
                        self._status_replies.setdefault(request_anchor.get(f.seq, 0), []).append(
                            f.payload)
                if f.seq != cp.UNSOLICITED_SEQ and f.seq in open_requests:
                    open_requests.pop(f.seq).append(f)
        first = next((s for s in self._statuses), None)
        self._current = first.payload if first is not None else None

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.device_path = os.ttyname(self._slave)
        self._loop.add_reader(self._master, self._on_readable)
        self._task = asyncio.create_task(self._push_loop(), name="replay-couch pushes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._master >= 0 and self._loop is not None:
            self._loop.remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    # ------------------------------------------------------------ wire
    def _write(self, seq: int, type_: int, payload: bytes) -> None:
        with contextlib.suppress(OSError):  # nobody listening: a UART just loses it
            os.write(self._master, cp.encode_raw(seq, type_, payload))

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        for item in self._decoder.feed(data):
            if isinstance(item, cp.Frame):
                self._on_frame(item)

    def _on_frame(self, f: cp.Frame) -> None:
        self.clock.start()
        now = self.clock.now()
        frame = CouchFrame(now, "tx", f.seq, f.type, f.payload)
        self.received.append(frame)
        if frame.kind in DECISIVE:
            self._decisive_seen.append(now)
            self._decisive_kinds.append(frame.kind)
        if f.type == _MT.HEARTBEAT:
            self._write(f.seq, _MT.ACK, bytes([_MT.HEARTBEAT]))
            return
        self._release_statuses(now)
        if f.type == _MT.STATUS_REQ:
            segment = len(self._decisive_seen)
            replies = self._status_replies.get(segment, [])
            n = self._status_used.get(segment, 0)
            self._status_used[segment] = n + 1
            payload = replies[n] if n < len(replies) else self._current
            if payload is not None:
                self._write(f.seq, _MT.STATUS, payload)
            return
        queue = self._replies.get(f.type, [])
        i = self._cursor.get(f.type, 0)
        self._cursor[f.type] = i + 1
        if i < len(queue) and queue[i]:
            for reply in queue[i]:
                self._write(f.seq, reply.type, reply.payload)
        elif f.type == _MT.STOP:  # STOP is always ACKed (docs/protocols/couch-serial.md)
            self._write(f.seq, _MT.ACK, bytes([_MT.STOP]))
        else:
            self.unanswered.append(f"{frame.kind} at {now:.3f} s")

    def _due(self, s: _Status, now: float) -> bool:
        if s.anchor > len(self._decisive_seen):
            return False
        if s.anchor and self._decisive_kinds[s.anchor - 1] != s.anchor_kind:
            return False  # igrtd sent something else: the replay has diverged, hold it back
        at = s.t if s.anchor == 0 else self._decisive_seen[s.anchor - 1] + (s.t - s.anchor_t)
        return now >= at

    def _release_statuses(self, now: float) -> None:
        while self._next_status < len(self._statuses):
            s = self._statuses[self._next_status]
            # igrtd already sent the next decisive request (a STOP earlier than in the
            # recording): what the controller said before it is history, not sent.
            stale = s.anchor < len(self._decisive_seen)
            if not stale and not self._due(s, now):
                return
            self._next_status += 1
            self._current = s.payload
            if s.push and not stale:
                self._write(cp.UNSOLICITED_SEQ, _MT.STATUS, s.payload)

    async def _push_loop(self) -> None:
        while True:
            if self.clock.started:
                self._release_statuses(self.clock.now())
            await asyncio.sleep(0.002)


class ReplayPlc:
    def __init__(self, recording: Recording, clock: ReplayClock, host: str = "127.0.0.1") -> None:
        self.clock = clock
        self.host = host
        self.port = 0
        self.blocks = recording.plc_blocks
        self.writes: list[tuple[float, int, list[int]]] = []
        self._server: ModbusTcpServer | None = None

    def block(self) -> list[int]:
        now = self.clock.now()
        current = self.blocks[0][1] if self.blocks else [0] * STATUS_BLOCK_COUNT
        for t, regs in self.blocks:
            if t > now:
                break
            current = regs
        out = (list(current) + [0] * STATUS_BLOCK_COUNT)[:STATUS_BLOCK_COUNT]
        out[StatusRegister.HEARTBEAT] = int(time.monotonic() * 100) & 0xFFFF  # a 10 ms PLC cycle
        return out

    async def start(self) -> None:
        device = SimDevice(
            DEFAULT_DEVICE_ID,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=STATUS_BLOCK_COUNT, values=0, datatype=DataType.REGISTERS,
                         readonly=True)],
                [SimData(0, count=STATUS_BLOCK_COUNT, values=0, datatype=DataType.REGISTERS,
                         readonly=True)],
            ),
            action=self._on_request,
        )
        self._server = ModbusTcpServer(device, address=(self.host, 0))
        await self._server.serve_forever(background=True)
        sock = self._server.transport.sockets[0]  # type: ignore[attr-defined]
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def _on_request(self, func_code: int, start_address: int, address: int, count: int,
                          registers: list[int], values: list[int] | list[bool] | None
                          ) -> ExcCodes | None:
        if func_code in (_FC_READ_HR, _FC_READ_IR):
            registers[:STATUS_BLOCK_COUNT] = self.block()
        elif func_code in (_FC_WRITE_COIL, _FC_WRITE_COILS) and values is not None:
            self.writes.append((self.clock.now(), address, [int(bool(v)) for v in values]))
        return None
