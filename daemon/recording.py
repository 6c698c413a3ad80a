"""Session recording: what igrtd saw and did, to a JSON-lines file for replay.

Off unless the room configuration has a `record` section (docs/record-replay.md).
One file per igrtd start: a header line (format, room, config digest and the
non-secret configuration a replay needs, users' names and roles, start wall
time), then one record per line, each with `t`, seconds since the recorder
started (monotonic clock):

    couch       every frame at the couch driver boundary, "tx" and "rx" (hex + type)
    plc_block   the room PLC status block, whenever a register other than the
                heartbeat changed (the heartbeat counts every PLC cycle)
    plc_write   every coil write igrtd sends
    command     every command that may change something: name, user, role,
                arguments, outcome (code) and the ids it created
    state       workflow state changes; `event`: every other audit record

Never in a recording: private keys, passwords, signed tokens (commands are taken
after verification: only the verified actor is kept).

The recorder must never slow igrtd down or get in the way of a STOP: the taps
and listeners (all on the event loop) only build a small dict and put it on a
bounded queue without waiting; a thread encodes and writes. A full queue drops
the record and counts it; the count is written to the file as soon as there is
room. At `max_mb` the recorder writes a `stopped` record and records nothing more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from daemon.audit.record import jsonable
from daemon.commands import Access, CommandListeners, CommandRun
from daemon.jsontypes import JsonMapping, JsonObject, JsonValue
from drivers import couch_protocol as cp
from drivers.plc_registers import StatusRegister

if TYPE_CHECKING:
    from daemon.config import RoomConfig
    from daemon.service import RoomService
    from drivers.couch import CouchClient
    from drivers.plc_client import RoomPlcClient

log = logging.getLogger("igrt.recording")

FORMAT = "igrt-recording/1"
QUEUE_RECORDS = 20_000  # ~ a minute of a busy move (heartbeats, pushes, PLC changes)
# Room left at the end of the file for the `stopped` record.
_TAIL_RESERVE = 512
_TYPE_NAMES = {int(m): m.name for m in cp.MsgType}
# Configuration sections a replay needs to behave like the recorded igrtd; none
# holds a secret (users are reduced to name and role below).
_REPLAY_SECTIONS = ("room", "couch", "couch_model", "policy", "plc", "motion", "binding", "qa")


def config_digest(config: RoomConfig) -> str:
    """sha256 of the configuration as validated (canonical JSON)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def header_for(config: RoomConfig) -> JsonObject:
    dumped = config.model_dump(mode="json")
    replay_config: JsonObject = {k: jsonable(dumped.get(k)) for k in _REPLAY_SECTIONS}
    users: list[JsonValue] = [{"name": u.name, "role": str(u.role)} for u in config.users]
    return {"format": FORMAT, "room": config.room, "config_digest": config_digest(config),
            "started_wall": time.time(), "config": replay_config, "users": users}


def frame_kind(frame: bytes) -> str:
    """The TYPE name of a couch frame (header byte 4)."""
    if len(frame) < cp.HEADER_LEN:
        return "short"
    return _TYPE_NAMES.get(frame[4], f"unknown(0x{frame[4]:02x})")


class SessionRecorder:
    """Queue + writer thread. Every `record_*` method is safe from the event loop."""

    def __init__(self, path: Path, max_bytes: int, header: JsonObject, *,
                 queue_records: int = QUEUE_RECORDS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.started = time.monotonic()
        self.dropped = 0
        self.written = 0
        self.stopped_reason: str | None = None
        self._queue: queue.Queue[JsonObject | None] = queue.Queue(maxsize=queue_records)
        self._header = header
        self._last_block: list[int] | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ life
    def open(self) -> None:
        """Create the file (an existing one is kept under a .N name) and start writing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            n = 1
            while self.path.with_name(f"{self.path.name}.{n}").exists():
                n += 1
            self.path.rename(self.path.with_name(f"{self.path.name}.{n}"))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        f = os.fdopen(fd, "w", encoding="utf-8")
        self._thread = threading.Thread(target=self._write_loop, args=(f,),
                                        name="igrt-recorder", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued and end; waits at most `timeout_s` (igrtd is exiting)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.put({"kind": "end"})
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("recorder queue full at exit; %s may lack its last records", self.path)
        thread.join(timeout_s)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    # ------------------------------------------------------------ taps (event loop)
    def put(self, record: JsonObject) -> None:
        if self.stopped_reason is not None:
            return
        record.setdefault("t", self.now())
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1  # read by the writer thread, which records the count

    def couch_frame(self, direction: str, frame: bytes) -> None:
        self.put({"kind": "couch", "dir": direction, "type": frame_kind(frame),
                   "seq": frame[3] if len(frame) > 3 else None, "hex": frame.hex()})

    def plc_io(self, kind: str, address: int, values: list[int]) -> None:
        if kind == "write":
            self.put({"kind": "plc_write", "address": address, "values": list(values)})
            return
        last = self._last_block
        hb = StatusRegister.HEARTBEAT
        if (last is not None and len(last) == len(values)
                and all(a == b for i, (a, b) in enumerate(zip(last, values)) if i != hb)):
            return
        self._last_block = list(values)
        self.put({"kind": "plc_block", "regs": list(values)})

    def room_event(self, event: JsonMapping) -> None:
        name = str(event.get("event"))
        details: JsonObject = {k: jsonable(v) for k, v in event.items()
                               if k not in ("event", "actor", "at")}
        if name == "state":
            self.put({"kind": "state", "old": details.get("old"), "new": details.get("new"),
                       "reason": details.get("reason"), "actor": str(event.get("actor"))})
        else:
            self.put({"kind": "event", "event": name, "actor": str(event.get("actor")),
                       "details": details})

    def command_run(self, run: CommandRun) -> None:
        """One command the dispatcher ran; read-only ones change nothing a replay
        must reproduce and are left out."""
        if run.access is Access.READ:
            return
        answer = run.answer
        ids: JsonObject = {}
        for key in ("id", "proposal_id", "confirmation_id"):
            value = (answer.result or {}).get(key)
            if isinstance(value, str):
                ids[key] = value
        self.put({"kind": "command", "t": round(run.started - self.started, 6), "t_end": self.now(),
                  "cmd": run.name, "user": run.actor.user, "role": str(run.actor.role),
                  "via": run.actor.via, "args": run.args, "ok": answer.ok,
                  "code": None if answer.code is None else str(answer.code), "ids": ids})

    def igrtd_stopping(self) -> None:
        """igrtd is exiting: its own STOP follows, which a replay must not compare."""
        self.put({"kind": "igrtd_stopping", "t": self.now()})

    # ------------------------------------------------------------ writer thread
    def _write_loop(self, f: TextIO) -> None:
        size = 0
        reported_drops = 0
        try:
            size += self._write_line(f, self._header)
            f.flush()
            while True:
                item = self._queue.get()
                batch = [item]
                while item is not None and len(batch) < 512:  # drain what is there
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(item)
                if self.dropped != reported_drops:
                    reported_drops = self.dropped
                    batch.insert(0, {"kind": "dropped", "t": self.now(), "total": reported_drops})
                for record in batch:
                    if record is None:
                        f.flush()
                        return
                    line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
                    if size + len(line) > self.max_bytes - _TAIL_RESERVE:
                        self._stop(f, f"size limit {self.max_bytes} bytes reached")
                        return
                    f.write(line)
                    size += len(line)
                    self.written += 1
                f.flush()
        except (OSError, ValueError) as exc:  # disk full, a value json cannot encode
            self.stopped_reason = f"recording failed: {exc}"
            log.error("session recording to %s stopped: %s", self.path, exc)
        finally:
            f.close()

    def _write_line(self, f: TextIO, record: JsonObject) -> int:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        f.write(line)
        return len(line)

    def _stop(self, f: TextIO, reason: str) -> None:
        self.stopped_reason = reason
        self._write_line(f, {"kind": "stopped", "t": self.now(), "reason": reason,
                             "dropped": self.dropped})
        f.flush()
        log.warning("session recording to %s stopped: %s", self.path, reason)
        while True:  # let the producers' records fall away; the file is closed
            try:
                if self._queue.get(timeout=0.5) is None:
                    return
            except queue.Empty:
                if self._thread is None:
                    return


# ---------------------------------------------------------------- wiring

def attach_recorder(config: RoomConfig, couch: CouchClient) -> SessionRecorder | None:
    """Start recording if the configuration asks for it; taps the couch at once, so
    the frames of igrtd's first contact with the controller are in the recording.
    A recording that cannot start is logged, and igrtd runs without it: a recording
    is for finding a problem later and must not keep a room from treating."""
    rc = config.record
    if rc is None:
        return None
    recorder = SessionRecorder(rc.path, int(rc.max_mb * 1_000_000), header_for(config))
    try:
        recorder.open()
    except OSError as exc:
        log.error("session recording to %s not started: %s", rc.path, exc)
        return None
    couch.tap = recorder.couch_frame
    log.info("recording this session to %s (at most %g MB)", rc.path, rc.max_mb)
    return recorder


def attach_room(recorder: SessionRecorder | None, plc: RoomPlcClient | None,
                service: RoomService, listeners: CommandListeners) -> None:
    """Tap the PLC, listen to the room's audit events and record every command
    that may change something, on whichever front end it arrives (the dispatcher's
    listeners hear each one with its validated arguments and its answer)."""
    if recorder is None:
        return
    if plc is not None:
        plc.tap = recorder.plc_io
    service.add_event_listener(recorder.room_event)
    listeners.add(recorder.command_run)
