"""The DICOM network side of igrt's storage service: a pynetdicom Application
Entity answering C-ECHO and C-STORE (docs/dicom.md). Wire protocol only: who
may associate, and what happens to a received instance, are decided by the
`StorageHandler` it is given.

pynetdicom (the maintained DICOM networking library of the pydicom project)
does the upper layer, association negotiation and DIMSE; this module adds
only what igrt needs around it: an association is admitted by the calling AE
title *and* the address it calls from (pynetdicom checks only the title),
before any presentation context is negotiated; every received dataset reaches
the handler with the bytes the peer sent, its SOP class and transfer syntax;
and nothing a peer sends can raise out of a handler into pynetdicom (which
would answer with a generic failure and log a traceback).

pynetdicom serves each association in threads of its own; the handler is
called in them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("igrt.dicom")

VERIFICATION = "1.2.840.10008.1.1"
# Uncompressed only: what planning systems, PACS and imaging workstations all
# send when asked, and what igrt can vouch for without a codec.
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent something: the calling AE title and the address it called from."""

    ae_title: str
    address: str


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    peer: Peer
    sop_class_uid: str  # of the presentation context it was sent under
    transfer_syntax_uid: str
    part10: bytes  # the peer's bytes as a DICOM Part 10 file (preamble, meta, dataset)
    # as the C-STORE request's command named it, unchecked (the dataset may say
    # otherwise): lets a refusal name the instance even when its bytes are unreadable
    affected_sop_instance_uid: str = ""
    # Which association brought it (unique while the service runs): a series whose
    # association was released in order is, to its sender, sent.
    association: int = 0


class StorageHandler(Protocol):
    def admit(self, peer: Peer) -> str | None:
        """None to accept an association from `peer`, else why not (one line)."""
        ...

    def store(self, instance: ReceivedInstance, decode: DatasetDecoder) -> int:
        """The C-STORE status to answer; the handler records why."""
        ...

    def echoed(self, peer: Peer) -> None:
        """`peer` verified the connection (C-ECHO)."""
        ...

    def rejected(self, peer: Peer, reason: str) -> None:
        """pynetdicom rejected an association `admit` had let through (the called AE
        title is not igrt's, too many associations at once)."""
        ...

    def released(self, peer: Peer, association: int) -> None:
        """`peer` released `association` in order (A-RELEASE): it sent all it meant to.
        Not called for an aborted or dropped association."""
        ...

    def closed(self, association: int) -> None:
        """The connection of `association` closed, however it ended."""
        ...


class DatasetDecoder(Protocol):
    """Decodes the received dataset (lazily, as pynetdicom does): call it inside a guard."""

    def __call__(self) -> Dataset: ...


# pynetdicom's own rejections (PS3.8 A-ASSOCIATE-RJ result, source, diagnostic).
_REJECTIONS = {
    (0x01, 0x01, 0x07): "called AE title not recognised (not igrt's AE title)",
    (0x02, 0x03, 0x02): "too many associations at once (dicom.max_associations)",
    (0x01, 0x01, 0x03): "calling AE title not recognised",
}


class StorageServer:
    """A Storage SCP on `bind`:`port` answering to `ae_title`."""

    def __init__(self, handler: StorageHandler, *, ae_title: str, bind: str, port: int,
                 sop_classes: list[str], max_associations: int,
                 network_timeout_s: float = 30.0) -> None:
        self._handler = handler
        self._ae = AE(ae_title=ae_title)
        self._ae.maximum_associations = max_associations
        self._ae.require_called_aet = True  # answers to its own title only
        self._ae.network_timeout = network_timeout_s
        self._ae.acse_timeout = network_timeout_s
        self._ae.dimse_timeout = network_timeout_s
        self._ae.add_supported_context(VERIFICATION, TRANSFER_SYNTAXES)
        for uid in sop_classes:
            self._ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        self._address = (bind, port)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        server = self._server
        if server is None:
            return self._address[1]
        return int(server.server_address[1])

    def start(self) -> None:
        handlers: list[EventHandlerType] = [(evt.EVT_REQUESTED, self._on_requested),
                                            (evt.EVT_REJECTED, self._on_rejected),
                                            (evt.EVT_C_ECHO, self._on_echo),
                                            (evt.EVT_C_STORE, self._on_store),
                                            (evt.EVT_RELEASED, self._on_released),
                                            (evt.EVT_CONN_CLOSE, self._on_closed)]
        self._server = self._ae.start_server(self._address, block=False, evt_handlers=handlers)

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()
            self._server = None

    # ------------------------------------------------------------ handlers
    @staticmethod
    def _peer(event: Event) -> Peer:
        requestor = event.assoc.requestor
        return Peer(str(requestor.ae_title).strip(), str(requestor.address))

    def _on_requested(self, event: Event) -> None:
        """Before negotiation: a caller not admitted is rejected (A-ASSOCIATE-RJ,
        permanent, calling AE title not recognised) and nothing it sends is read."""
        try:
            primitive = event.assoc.requestor.primitive
            refusal: str | None
            if primitive is None:
                refusal = "no association request"
            else:
                peer = Peer(str(primitive.calling_ae_title).strip(),
                            str(event.assoc.requestor.address))
                refusal = self._handler.admit(peer)
        except Exception as exc:  # noqa: BLE001 - a fault here must reject, not admit
            log.error("association admission failed: %s", exc)
            refusal = "internal error while admitting the association"
        if refusal is not None:
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()

    def _on_rejected(self, event: Event) -> None:
        try:
            rj = event.assoc.acceptor.primitive
            key = ((int(rj.result or 0), int(rj.result_source or 0), int(rj.diagnostic or 0))
                   if rj is not None else (0, 0, 0))
            reason = _REJECTIONS.get(key, f"rejected (result, source, diagnostic {key})")
            primitive = event.assoc.requestor.primitive
            title = str(primitive.calling_ae_title).strip() if primitive is not None else "?"
            self._handler.rejected(Peer(title, str(event.assoc.requestor.address)), reason)
        except Exception as exc:  # noqa: BLE001 - bookkeeping only; the rejection stands
            log.error("association rejection bookkeeping failed: %s", exc)

    def _on_echo(self, event: Event) -> int:
        try:
            self._handler.echoed(self._peer(event))
        except Exception as exc:  # noqa: BLE001 - an echo is answered regardless
            log.error("C-ECHO bookkeeping failed: %s", exc)
        return STATUS_SUCCESS

    def _on_store(self, event: Event) -> int:
        try:
            instance = ReceivedInstance(
                peer=self._peer(event),
                sop_class_uid=str(event.context.abstract_syntax),
                transfer_syntax_uid=str(event.context.transfer_syntax),
                part10=event.encoded_dataset(include_meta=True),
                # a C-STORE request always has it; pynetdicom types `request` as any DIMSE
                affected_sop_instance_uid=str(
                    getattr(event.request, "AffectedSOPInstanceUID", None) or ""),
                association=id(event.assoc),
            )
            return self._handler.store(instance, lambda: event.dataset)
        except Exception as exc:  # noqa: BLE001 - never a traceback into pynetdicom
            log.error("C-STORE handling failed: %s", exc)
            return STATUS_PROCESSING_FAILURE

    def _on_released(self, event: Event) -> None:
        try:
            self._handler.released(self._peer(event), id(event.assoc))
        except Exception as exc:  # noqa: BLE001 - bookkeeping only; the release stands
            log.error("association release bookkeeping failed: %s", exc)

    def _on_closed(self, event: Event) -> None:
        try:
            self._handler.closed(id(event.assoc))
        except Exception as exc:  # noqa: BLE001 - bookkeeping only
            log.error("connection close bookkeeping failed: %s", exc)
