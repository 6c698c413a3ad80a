"""The audit log: append-only, hash-chained, durable (R-AUDIT).

Storage is a directory of JSON-lines segment files, one record per line,
named after the seq of their first record (``audit-000000000001.jsonl``).
Each record carries the sha256 of the previous record (``prev_hash``) and its
own ``hash`` over the canonical JSON of everything else, so editing, removing,
reordering or inserting a record breaks the chain at that point and
`verify` names where. Why segment files rather than SQLite: docs/audit.md.

Durability contract: `AuditLog.append` returns only after the line has been
written and fdatasync'd, so the daemon appends *before* it acts or
acknowledges. After a power loss only the final line can be torn (every
earlier one was synced before the next was written); `AuditLog.open` cuts a
torn final line away, keeps its bytes in a recovery record, and refuses to
"repair" anything else.

The modules, by responsibility:

- `record`: the record format, canonical JSON and hash, and the parsing and
  self-check of a stored line;
- `segments`: segment file names and the raw bytes of their lines;
- `reading`: filtered and tail reads (read-only, safe while igrtd appends);
- `verify`: the chain walk and the head anchor check;
- `log`: `AuditLog`, the writer, and its recovery of a torn tail;
- `errors`: the exceptions.

The writer, its recovery, the readers and the verifier must agree byte for
byte on the canonical form and the chain. They do because none of them has
its own copy: all build, hash and check records through `record` alone, so
one change cannot update the writer and forget the verifier.

Import the names below from `daemon.audit`; the submodules are its inside.
"""

from __future__ import annotations

from daemon.audit.errors import AuditCorruptError, AuditError, AuditLockedError, AuditWriteError
from daemon.audit.log import LOCK_FILE, MAX_DISCARDED_EVIDENCE, AuditLog
from daemon.audit.reading import read_records, tail_records
from daemon.audit.record import (
    AUDIT_LINE_MAX_BYTES,
    FORMAT_VERSION,
    GENESIS_HASH,
    AuditRecord,
    canonical_json,
    iso_utc,
    jsonable,
    parse_line,
    record_hash,
)
from daemon.audit.segments import HEAD_FILE, SEGMENT_RE, list_segments, segment_name
from daemon.audit.verify import VerifyResult, verify

__all__ = [
    "AUDIT_LINE_MAX_BYTES",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "HEAD_FILE",
    "LOCK_FILE",
    "MAX_DISCARDED_EVIDENCE",
    "SEGMENT_RE",
    "AuditCorruptError",
    "AuditError",
    "AuditLockedError",
    "AuditLog",
    "AuditRecord",
    "AuditWriteError",
    "VerifyResult",
    "canonical_json",
    "iso_utc",
    "jsonable",
    "list_segments",
    "parse_line",
    "read_records",
    "record_hash",
    "segment_name",
    "tail_records",
    "verify",
]
