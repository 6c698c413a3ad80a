"""Query/retrieve from a PACS: a pynetdicom SCU of the Patient Root
Query/Retrieve information model, C-FIND and C-MOVE (docs/dicom.md,
"Query/retrieve from a PACS"). Wire protocol only: which keys are asked, what
an answer is worth and what a retrieve must bring are decided by the caller
(daemon/dicom_query.py).

Each call opens an association, sends one request, reads every response and
releases, so a half-read answer never leaves an association in an unknown
state. Matches are handed back as the datasets pynetdicom decoded (lazily,
from the peer's bytes: the caller decodes them inside its guard); C-MOVE
pending responses are handed to a callback as they come, so a display can
follow the sub-operations.

Nothing here raises anything but `QrError` (or its `QrUnreachable`): no
association, a rejection, no answer in time, a failure status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from drivers.dicom_scu import REJECTIONS  # PS3.8 A-ASSOCIATE-RJ, as an administrator reads them

log = logging.getLogger("igrt.dicom")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
# The identifiers are small: the two uncompressed syntaxes every SCP accepts.
_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000



class QrError(Exception):
    """The query or retrieve did not happen or failed (one line)."""


class QrUnreachable(QrError):
    """The PACS could not be reached, or did not answer in time (one line)."""


@dataclass(frozen=True, slots=True)
class RemoteAE:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title} at {self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class FindResult:
    matches: list[Dataset]
    truncated: bool  # more than max_matches answered: the rest was not read


@dataclass(frozen=True, slots=True)
class MoveStatus:
    """One C-MOVE response: pending (sub-operations going on) or final."""

    status: int
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None
    # the final response's Failed SOP Instance UID List, as the peer sent it
    # (the caller checks each is a UID before showing or using it)
    failed_sop_instances: tuple[str, ...] = ()

    @property
    def pending(self) -> bool:
        return self.status in _PENDING


def _count(status: Dataset, keyword: str) -> int | None:
    value = status.get(keyword)
    return int(value) if value is not None else None


def _one_line(text: object, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat[:limit]


def _end(assoc: Association, *, answered: bool) -> None:
    """Release after the final response; abort when leaving before it (an error, an
    interrupt): a release in the middle of an operation is out of order."""
    if not assoc.is_established:
        return
    if answered:
        assoc.release()
    else:
        assoc.abort()


class QueryRetrieveScu:
    """Calls `peer` as `ae_title` (igrt's own AE title: the one the PACS knows)."""

    def __init__(self, *, ae_title: str, peer: RemoteAE, timeout_s: float = 30.0) -> None:
        self._calling = ae_title
        self._peer = peer
        self._timeout = timeout_s

    def _associate(self, sop_class: str, what: str) -> Association:
        ae = AE(ae_title=self._calling)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = self._timeout
        ae.dimse_timeout = self._timeout
        ae.add_requested_context(sop_class, _TRANSFER_SYNTAXES)
        opened: list[bool] = []

        def _opened(_: Event) -> None:
            opened.append(True)

        try:
            assoc = ae.associate(self._peer.host, self._peer.port, ae_title=self._peer.ae_title,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, _opened)])
        except (OSError, ValueError, RuntimeError) as exc:
            raise QrUnreachable(f"cannot associate with PACS {self._peer}: "
                                f"{_one_line(exc)}") from None
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            key = ((int(rj.result or 0), int(rj.result_source or 0), int(rj.diagnostic or 0))
                   if rj is not None else (0, 0, 0))
            why = REJECTIONS.get(key, f"result, source, diagnostic {key}")
            raise QrError(f"PACS {self._peer} rejected the association as "
                          f"{self._calling} ({why})")
        if not assoc.is_established:
            if not opened:
                raise QrUnreachable(f"cannot connect to PACS {self._peer} (nothing listening, "
                                    f"or no answer within {self._timeout:g} s)")
            raise QrUnreachable(f"association with PACS {self._peer} aborted or not answered "
                                f"within {self._timeout:g} s")
        if not assoc.accepted_contexts:
            assoc.release()
            raise QrError(f"PACS {self._peer} does not offer {what} "
                          f"(Patient Root Query/Retrieve, {sop_class})")
        return assoc

    def _no_answer(self, what: str) -> QrUnreachable:
        return QrUnreachable(f"no {what} answer from PACS {self._peer} within "
                             f"{self._timeout:g} s (association aborted)")

    def find(self, identifier: Dataset, *, max_matches: int) -> FindResult:
        """C-FIND: every match up to `max_matches`; beyond that the association is
        aborted and the result says it was truncated."""
        assoc = self._associate(PATIENT_ROOT_FIND, "C-FIND")
        matches: list[Dataset] = []
        answered = False
        try:
            for status, ident in assoc.send_c_find(identifier, PATIENT_ROOT_FIND):
                code = status.get("Status")
                if code is None:
                    raise self._no_answer("C-FIND")
                if int(code) in _PENDING:
                    if ident is None:
                        raise QrError(f"PACS {self._peer} sent a C-FIND match that cannot be "
                                      "decoded")
                    if len(matches) == max_matches:
                        assoc.abort()  # stop reading: the caller bounded the answer
                        return FindResult(matches, truncated=True)
                    matches.append(ident)
                    continue
                answered = True
                if int(code) != _SUCCESS:
                    comment = status.get("ErrorComment")
                    raise QrError(f"PACS {self._peer} answered C-FIND with status "
                                  f"0x{int(code):04X}"
                                  + (f": {_one_line(comment)}" if comment else ""))
            return FindResult(matches, truncated=False)
        finally:
            _end(assoc, answered=answered)

    def move(self, identifier: Dataset, *, destination: str,
             progress: Callable[[MoveStatus], None]) -> MoveStatus:
        """C-MOVE to the AE title `destination`: each pending response to
        `progress`, the final one returned (whatever its status)."""
        assoc = self._associate(PATIENT_ROOT_MOVE, "C-MOVE")
        answered = False
        try:
            for status, ident in assoc.send_c_move(identifier, destination, PATIENT_ROOT_MOVE):
                code = status.get("Status")
                if code is None:
                    raise self._no_answer("C-MOVE")
                answer = MoveStatus(int(code), _count(status, "NumberOfRemainingSuboperations"),
                                    _count(status, "NumberOfCompletedSuboperations"),
                                    _count(status, "NumberOfFailedSuboperations"),
                                    _count(status, "NumberOfWarningSuboperations"))
                if answer.pending:
                    progress(answer)
                    continue
                answered = True
                failed: tuple[str, ...] = ()
                if ident is not None:
                    try:
                        raw = ident.get("FailedSOPInstanceUIDList")
                        values = [] if raw is None else ([raw] if isinstance(raw, str) else raw)
                        failed = tuple(_one_line(v, 70) for v in list(values)[:10_000])
                    except Exception as exc:  # noqa: BLE001 - peer bytes decoded lazily
                        log.warning("unreadable Failed SOP Instance UID List: %s", exc)
                return MoveStatus(answer.status, answer.remaining, answer.completed,
                                  answer.failed, answer.warning, failed)
            raise self._no_answer("final C-MOVE")
        finally:
            _end(assoc, answered=answered)
