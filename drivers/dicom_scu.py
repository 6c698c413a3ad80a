"""Outbound DICOM: one C-STORE of one Part 10 file to one peer, as a pynetdicom
Storage SCU (docs/dicom.md, "Export to record-and-verify"). Wire protocol
only: which file goes where, when, and what a failure means for the next
attempt are decided by the caller (daemon/dicom_export.py).

Each call opens an association, offers the file's SOP class in the file's own
transfer syntax, sends the file's dataset bytes as they are on disk (no
decode and re-encode: the bytes made durable under a SOP Instance UID are the
bytes that leave), and releases. The answer is the peer's DIMSE status, or
None with a one-line reason when no status came back (nothing listening,
association rejected or aborted, no answer in time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event

log = logging.getLogger("igrt.dicom")

# PS3.8 A-ASSOCIATE-RJ (result, source, diagnostic) as a peer's administrator reads them.
REJECTIONS = {
    (1, 1, 1): "permanent, no reason given",
    (1, 1, 2): "permanent, application context not supported",
    (1, 1, 3): "permanent, calling AE title not recognised",
    (1, 1, 7): "permanent, called AE title not recognised",
    (2, 1, 1): "transient, no reason given",
    (1, 2, 2): "permanent, protocol version not supported",
    (2, 3, 1): "transient, temporary congestion",
    (2, 3, 2): "transient, local limit exceeded",
}


@dataclass(frozen=True, slots=True)
class StoreAnswer:
    """What came back: the peer's C-STORE status, or None and why there was none."""

    status: int | None
    reason: str  # one line; "" when the peer answered success

    @property
    def category(self) -> str:
        """PS3.4 Annex B status class: success, warning, failure or no answer."""
        s = self.status
        if s is None:
            return "no answer"
        if s == 0x0000:
            return "success"
        if s in (0x0001, 0x0107, 0x0116) or 0xB000 <= s <= 0xBFFF:
            return "warning"
        return "failure"


@dataclass(frozen=True, slots=True)
class StoreTarget:
    ae_title: str
    host: str
    port: int


class StoreScu:
    """Storage SCU calling as `calling_ae_title`."""

    def __init__(self, calling_ae_title: str, *, timeout_s: float = 30.0) -> None:
        self._calling = calling_ae_title
        self._timeout = timeout_s

    def store(self, target: StoreTarget, path: Path, sop_class_uid: str,
              transfer_syntax_uid: str) -> StoreAnswer:
        """C-STORE the Part 10 file at `path` to `target`."""
        where = f"{target.ae_title} at {target.host}:{target.port}"
        ae = AE(ae_title=self._calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        ae.connection_timeout = self._timeout
        ae.add_requested_context(sop_class_uid, [transfer_syntax_uid])
        opened: list[bool] = []

        def _opened(_: Event) -> None:
            opened.append(True)

        # Sent from the file as it is on disk (pynetdicom reads its dataset bytes after
        # the file meta and sends them undecoded). A setting of pynetdicom's SCU only;
        # igrt-dicomd's SCP side does not read it.
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            assoc = ae.associate(target.host, target.port, ae_title=target.ae_title,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, _opened)])
        except (OSError, ValueError, RuntimeError) as exc:
            return StoreAnswer(None, f"cannot associate with {where}: {exc}")
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            key = ((int(rj.result or 0), int(rj.result_source or 0), int(rj.diagnostic or 0))
                   if rj is not None else (0, 0, 0))
            why = REJECTIONS.get(key, f"result, source, diagnostic {key}")
            return StoreAnswer(None, f"association rejected by {where} ({why})")
        if not assoc.is_established:
            if not opened:
                return StoreAnswer(None, f"cannot connect to {where} (nothing listening, or "
                                   f"no answer within {self._timeout:g} s)")
            return StoreAnswer(None, f"association with {where} aborted or not answered "
                               f"within {self._timeout:g} s")
        try:
            if not assoc.accepted_contexts:
                return StoreAnswer(None, f"{where} accepts no {sop_class_uid} in transfer "
                                   f"syntax {transfer_syntax_uid}")
            try:
                rsp = assoc.send_c_store(path)
            except (OSError, ValueError, AttributeError, RuntimeError) as exc:
                return StoreAnswer(None, f"C-STORE to {where} failed: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            status = rsp.get("Status") if rsp is not None else None
            if status is None:
                if assoc.is_aborted:
                    return StoreAnswer(None, f"{where} aborted the association without "
                                       "answering the C-STORE (does it know igrt's AE title?)")
                return StoreAnswer(None, f"no C-STORE answer from {where} within "
                                   f"{self._timeout:g} s")
            code = int(status)
            return StoreAnswer(code, "" if code == 0 else f"{where} answered status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
