"""One audit record: its stored fields, canonical JSON and hash.

This is the single definition of the record format. The writer (`log`), the
recovery of a torn tail, the readers (`reading`) and the verifier (`verify`)
all build, hash and check records through this module only, so they agree
byte for byte on the canonical form and the chain: a change to the format is
made here once and cannot update the writer and forget the verifier.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Protocol, runtime_checkable

from daemon.jsontypes import JsonMapping, JsonObject, JsonValue
from safety import strict_json

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
# One record is a few hundred bytes; a line far beyond this was not written by igrtd.
AUDIT_LINE_MAX_BYTES = 4 << 20
_FIELDS = ("v", "seq", "ts", "time", "event", "actor", "details", "prev_hash", "hash")


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: float
    event: str
    actor: str
    details: JsonObject
    prev_hash: str
    hash: str

    @property
    def time_iso(self) -> str:
        return iso_utc(self.ts)

    def to_dict(self) -> JsonObject:
        """The record as stored (key order chosen for reading with grep/less)."""
        return {
            "seq": self.seq,
            "time": self.time_iso,
            "event": self.event,
            "actor": self.actor,
            "details": self.details,
            "ts": self.ts,
            "prev_hash": self.prev_hash,
            "v": FORMAT_VERSION,
            "hash": self.hash,
        }


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@runtime_checkable
class _PydanticModel(Protocol):
    # isinstance() against this only asks whether `model_dump` exists, which
    # is how a pydantic v2 model is recognised without importing pydantic.
    def model_dump(self, *, mode: str) -> object: ...


def jsonable(value: object) -> JsonValue:
    """`value` as plain JSON types, so what is hashed is exactly what is stored.

    The daemon passes poses, enums and pydantic models as details; auditing
    must never fail because of a type, so anything unknown becomes its str().
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN/Infinity; keep them visible instead of failing.
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if isinstance(value, _PydanticModel):
        return jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def canonical_json(obj: object) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def record_hash(fields: JsonMapping) -> str:
    """sha256 over the canonical JSON of the record without its `hash`."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def parse_line(line: bytes) -> AuditRecord:
    """Parse and self-check one stored line (without its newline).

    Raises ValueError naming what is wrong; checks the record's own hash but
    not its link to the previous record.
    """
    # A stored line is outside input to `audit verify` (the file may have been
    # edited): read strictly, so a deep, duplicated or non-finite line is a bad
    # record, never a crash of the verifier.
    try:
        obj = strict_json.loads(line, max_bytes=AUDIT_LINE_MAX_BYTES)
    except strict_json.JsonInputError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - one error type for "bad line"
    if set(obj) != set(_FIELDS):
        missing = sorted(set(_FIELDS) - set(obj))
        extra = sorted(set(obj) - set(_FIELDS))
        raise ValueError(f"wrong fields (missing {missing}, unexpected {extra})")
    types = {
        "v": int,
        "seq": int,
        "ts": (int, float),
        "time": str,
        "event": str,
        "actor": str,
        "details": dict,
        "prev_hash": str,
        "hash": str,
    }
    for key, typ in types.items():
        if not isinstance(obj[key], typ) or isinstance(obj[key], bool):  # type: ignore[arg-type]
            raise ValueError(f"field {key!r} has the wrong type")  # noqa: TRY004
    if obj["v"] != FORMAT_VERSION:
        raise ValueError(f"unknown format version {obj['v']}")
    if record_hash(obj) != obj["hash"]:
        raise ValueError("hash does not match the record's content (record edited)")
    if obj["time"] != iso_utc(float(obj["ts"])):
        raise ValueError("time does not match ts")
    return AuditRecord(
        seq=obj["seq"],
        ts=float(obj["ts"]),
        event=obj["event"],
        actor=obj["actor"],
        details=obj["details"],
        prev_hash=obj["prev_hash"],
        hash=obj["hash"],
    )
