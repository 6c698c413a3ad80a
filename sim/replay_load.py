"""Reading a session recording (daemon/recording.py) strictly, for replay.

A recording is outside input (it comes from a field room, possibly cut short
or edited): every line is read with safety.strict_json (no NaN/Infinity, no
duplicate keys), sizes are bounded, and anything wrong is a `RecordingError`
naming the file and line in one line (igrt-sim replay exits 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from daemon.jsontypes import JsonObject, JsonValue
from daemon.recording import FORMAT
from drivers import couch_protocol as cp
from safety.strict_json import JsonInputError
from safety.strict_json import loads as strict_loads

MAX_FILE_BYTES = 256 << 20
MAX_LINE_BYTES = 1 << 20
# Frames igrtd decides to send; heartbeats and status requests follow the clock.
DECISIVE = frozenset({"TARGET", "GO", "STOP", "RESET", "JOG"})
_KINDS = frozenset({"couch", "plc_block", "plc_write", "command", "state", "event", "dropped",
                    "stopped", "end", "igrtd_stopping"})


class RecordingError(ValueError):
    """A recording that cannot be replayed; str() is one line."""


@dataclass(frozen=True, slots=True)
class CouchFrame:
    t: float
    dir: str  # "tx" igrtd -> controller, "rx" controller -> igrtd
    seq: int
    type: int
    payload: bytes

    @property
    def kind(self) -> str:
        try:
            return cp.MsgType(self.type).name
        except ValueError:
            return f"unknown(0x{self.type:02x})"


@dataclass(frozen=True, slots=True)
class Command:
    t: float
    cmd: str
    user: str
    role: str
    args: JsonObject
    ok: bool
    code: str | None
    ids: JsonObject


@dataclass(slots=True)
class Recording:
    path: Path
    header: JsonObject
    couch: list[CouchFrame] = field(default_factory=list)
    plc_blocks: list[tuple[float, list[int]]] = field(default_factory=list)
    plc_writes: list[tuple[float, int, list[int]]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    stopping_t: float | None = None  # igrtd began to shut down (its own STOP follows)
    end_t: float = 0.0
    dropped: int = 0
    stopped: str | None = None

    @property
    def window_end(self) -> float:
        """Records from here on belong to igrtd's shutdown, not to the session."""
        return self.stopping_t if self.stopping_t is not None else math.inf

    def decisive_tx(self) -> list[CouchFrame]:
        return [f for f in self.couch if f.dir == "tx" and f.kind in DECISIVE
                and f.t < self.window_end]

    def state_sequence(self) -> list[tuple[float, str]]:
        return [(t, s) for t, s in self.states if t < self.window_end]

    def users(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for u in _list(self.header.get("users"), "header users"):
            if isinstance(u, dict) and isinstance(u.get("name"), str):
                out[str(u["name"])] = str(u.get("role"))
        return out


def _list(v: JsonValue | None, what: str) -> list[JsonValue]:
    if not isinstance(v, list):
        raise RecordingError(f"{what}: expected an array")
    return v


def _num(rec: JsonObject, key: str, where: str) -> float:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RecordingError(f"{where}: {key} must be a finite number, got {v!r}"[:200])
    if not 0 <= v <= 1e7:
        raise RecordingError(f"{where}: {key} {v} s is outside 0..1e7 s")
    return float(v)


def _str(rec: JsonObject, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise RecordingError(f"{where}: {key} must be a string")
    return v


def _ints(v: JsonValue | None, where: str, hi: int) -> list[int]:
    if not isinstance(v, list) or len(v) > 64:
        raise RecordingError(f"{where}: expected an array of at most 64 integers")
    out: list[int] = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= hi:
            raise RecordingError(f"{where}: {x!r} is not an integer 0..{hi}")
        out.append(x)
    return out


def _frame(rec: JsonObject, t: float, where: str) -> CouchFrame:
    direction = _str(rec, "dir", where)
    if direction not in ("tx", "rx"):
        raise RecordingError(f"{where}: dir must be tx or rx")
    try:
        raw = bytes.fromhex(_str(rec, "hex", where))
    except ValueError:
        raise RecordingError(f"{where}: hex is not hexadecimal") from None
    items = cp.FrameDecoder().feed(raw)
    if len(items) != 1 or not isinstance(items[0], cp.Frame):
        raise RecordingError(f"{where}: hex is not one whole couch frame with a good CRC")
    f = items[0]
    return CouchFrame(t, direction, f.seq, f.type, f.payload)


def _add(r: Recording, rec: JsonObject, where: str) -> None:
    kind = _str(rec, "kind", where)
    if kind not in _KINDS:
        raise RecordingError(f"{where}: unknown record kind {kind!r}"[:200])
    t = _num(rec, "t", where)
    r.end_t = max(r.end_t, t)
    if kind == "couch":
        r.couch.append(_frame(rec, t, where))
    elif kind == "plc_block":
        r.plc_blocks.append((t, _ints(rec.get("regs"), f"{where}: regs", 0xFFFF)))
    elif kind == "plc_write":
        address = rec.get("address")
        if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address < 16:
            raise RecordingError(f"{where}: address must be a coil address 0..15")
        r.plc_writes.append((t, address, _ints(rec.get("values"), f"{where}: values", 1)))
    elif kind == "command":
        args, ids, ok = rec.get("args"), rec.get("ids", {}), rec.get("ok")
        code = rec.get("code")
        if not isinstance(args, dict) or not isinstance(ids, dict) or not isinstance(ok, bool):
            raise RecordingError(f"{where}: command needs object args and ids, boolean ok")
        r.commands.append(Command(t, _str(rec, "cmd", where), _str(rec, "user", where),
                                  _str(rec, "role", where), args, ok,
                                  code if isinstance(code, str) else None, ids))
    elif kind == "state":
        r.states.append((t, _str(rec, "new", where)))
    elif kind == "igrtd_stopping":
        r.stopping_t = t if r.stopping_t is None else min(r.stopping_t, t)
    elif kind == "dropped":
        r.dropped = max(r.dropped, int(_num(rec, "total", where)))
    elif kind == "stopped":
        r.stopped = _str(rec, "reason", where)


def load_recording(path: Path, max_bytes: int = MAX_FILE_BYTES) -> Recording:
    """The recording at `path`, or RecordingError in one line."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RecordingError(f"{path}: {size} bytes is larger than the limit {max_bytes} "
                                 "bytes for a recording")
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read: {exc.strerror}") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise RecordingError(f"{path}: empty file, not a recording")
    recording: Recording | None = None
    for n, line in enumerate(lines, 1):
        where = f"{path} line {n}"
        if len(line) > MAX_LINE_BYTES:
            raise RecordingError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
        try:
            rec = strict_loads(line, max_depth=12, max_bytes=MAX_LINE_BYTES)
        except JsonInputError as exc:
            raise RecordingError(f"{where}: not a JSON record: {exc}"[:300]) from None
        if not isinstance(rec, dict):
            raise RecordingError(f"{where}: a record is a JSON object")
        if recording is None:
            if rec.get("format") != FORMAT:
                raise RecordingError(f"{where}: not an igrt recording (format must be {FORMAT})")
            if not isinstance(rec.get("config"), dict) or not isinstance(rec.get("room"), str):
                raise RecordingError(f"{where}: header needs room and config")
            recording = Recording(path, rec)
            recording.users()  # the header's users must be readable
            continue
        _add(recording, rec, where)
    assert recording is not None
    recording.commands.sort(key=lambda c: c.t)  # written at completion; issued at t
    if not any(f.dir == "tx" for f in recording.couch):
        raise RecordingError(f"{path}: no couch frame from igrtd: nothing to replay against")
    return recording
