"""Apply-once claims and token ids recovered from the audit log at start-up.

A GO waits for one sync only: the audit log's (daemon/group_commit.py). The
state store's WAL, which holds the apply-once claim (`claim_move`) and the
replay cache of signed-token ids, is synced straight after it, off the path
to the GO (issue 13, item 6: two syncs one after the other doubled the GO's
exposure to the disk's tail under a parallel disk load). A kill -9 of igrtd
loses nothing (both are in the page cache); a power loss or kernel crash
between the two syncs can leave the store without a claim whose GO went out.

The audit log holds every such claim: the motion gate writes the
`command`/`couch_target` record, naming the confirmation, the proposal and
the target, before it claims the move, and the GO waits for that record to
be durable (daemon/motion_gate.py). So before igrtd takes any command it
reads the log backward from its end, down to the newest `couch_target`
record whose confirmation the store knows: the store's commits are durable
in the order they were made (SQLite's WAL), so every claim before that one
is stored too. Each `couch_target` record after it whose confirmation has no
move is stored as an interrupted move (never sent again) and audited; each
token id the records of the last five minutes name is remembered again, so a
signed command whose id the store lost is still refused as a replay.

A `couch_target` record whose claim was refused (the confirmation or its
proposal already had a move) is recovered the same way: its confirmation was
spent either way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from daemon.audit.errors import AuditCorruptError
from daemon.audit.record import AuditRecord, parse_line
from daemon.audit.segments import iter_segment_lines, list_segments
from daemon.jsontypes import JsonMapping, JsonObject
from daemon.store import JTI_LEEWAY_S

log = logging.getLogger("igrt.recovery")

# Token ids named by records this recent (against the newest record) are remembered
# again, until this long past the record's time. A token lives at most 30 s and is
# accepted within 2 s of clock skew (daemon/console/tokens.py: CommandVerifier), so
# one accepted earlier than that before igrtd stopped can never be accepted again;
# the window is the store's own leeway, ten times that.
JTI_WINDOW_S = JTI_LEEWAY_S
# What a claim's or a token id's audit record looks like on the raw line, before it
# is parsed: only such lines are.
_CLAIM_MARK = b'"couch_target"'
_JTI_MARK = b'"jti"'


class ClaimStore(Protocol):
    """The state store as recovery uses it (daemon.store.CorrectionStore)."""

    def move_for_confirmation(self, confirmation_id: str) -> JsonObject | None: ...
    def recover_claim(self, confirmation_id: str, proposal_id: str, target: JsonMapping,
                      claimed_at: float, detail: JsonMapping) -> bool: ...
    def remember_jtis(self, ids: list[tuple[str, float]]) -> int: ...


class RecoveryAudit(Protocol):
    def append(self, event: str, actor: str, **details: object) -> object: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    claims: list[str]  # confirmation ids stored as interrupted moves
    token_ids: int  # ids the store had lost and remembers again
    records_read: int  # records parsed (only lines that may name a claim or a token id)


def recover_from_audit(directory: Path, store: ClaimStore, audit: RecoveryAudit) -> Recovered:
    """Store what the audit log at `directory` holds and `store` lost; audit each claim.

    Call after the audit log is opened (its torn tail cut) and before igrtd takes a
    command. An unreadable record raises AuditCorruptError (igrtd does not start)."""
    claims: list[str] = []
    token_ids: list[tuple[str, float]] = []
    read = 0
    window_start: float | None = None  # set by the newest record read
    past_window = False  # records are in time order: once past, every older one is too
    stored_claim_met = False  # the newest claim the store holds: older ones are stored too
    for line in _backward(directory):
        if not line.is_claim and (past_window or not line.has_jti):
            continue
        rec = line.parse()
        read += 1
        if window_start is None:
            window_start = rec.ts - JTI_WINDOW_S
        past_window = past_window or rec.ts < window_start
        if past_window and stored_claim_met:
            break
        jti = rec.details.get("jti")
        if line.has_jti and not past_window and isinstance(jti, str) and jti:
            token_ids.append((jti, rec.ts + JTI_WINDOW_S))
        if not line.is_claim or stored_claim_met:
            continue
        confirmation_id, proposal_id, target = _claim_of(rec)
        if confirmation_id is None or proposal_id is None:
            continue
        if store.move_for_confirmation(confirmation_id) is not None:
            stored_claim_met = True
            continue
        if store.recover_claim(confirmation_id, proposal_id, target, rec.ts,
                               {"by": "recovery from the audit log", "audit_seq": rec.seq}):
            claims.append(confirmation_id)
            audit.append("recovery", "system", confirmation_id=confirmation_id,
                         proposal_id=proposal_id, audit_seq=rec.seq,
                         outcome=("move claimed in the audit log but not in the state store "
                                  "(power loss): stored as interrupted; it is never re-sent"))
    remembered = store.remember_jtis(token_ids)
    if claims or remembered:
        log.warning("recovered from the audit log: %d claim(s), %d token id(s)",
                    len(claims), remembered)
    return Recovered(list(reversed(claims)), remembered, read)


def _claim_of(rec: AuditRecord) -> tuple[str | None, str | None, JsonMapping]:
    d = rec.details
    if rec.event != "command" or d.get("command") != "couch_target":
        return None, None, {}
    confirmation_id, proposal_id, target = (d.get("confirmation_id"), d.get("proposal_id"),
                                            d.get("target"))
    return (confirmation_id if isinstance(confirmation_id, str) else None,
            proposal_id if isinstance(proposal_id, str) else None,
            target if isinstance(target, dict) else {})


@dataclasses.dataclass(frozen=True, slots=True)
class _Line:
    segment: str
    number: int
    raw: bytes
    is_claim: bool
    has_jti: bool

    def parse(self) -> AuditRecord:
        try:
            return parse_line(self.raw)
        except ValueError as exc:
            raise AuditCorruptError(
                f"{self.segment} line {self.number}: {exc}; run `igrtctl audit verify`"
            ) from None


def _backward(directory: Path) -> Iterator[_Line]:
    """Each whole line that may name a claim or a token id, newest first; a segment is
    read whole, from the newest segment back."""
    for _, path in reversed(list_segments(directory)):
        marked = [
            _Line(path.name, number, raw, _CLAIM_MARK in raw, _JTI_MARK in raw)
            for number, raw, terminated in iter_segment_lines(path)
            if terminated and (_CLAIM_MARK in raw or _JTI_MARK in raw)
        ]
        yield from reversed(marked)
