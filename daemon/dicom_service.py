"""igrt-dicomd: igrt's DICOM storage service (docs/dicom.md).

A companion process of igrtd, not a part of it: it shares the room
configuration and the state directory and runs under the same supervision
(systemd/igrt-dicom.service, part of igrtd's unit), but in a process of its
own, because what a clinic's network sends must never touch the couch. A CT
pushed slice by slice is hundreds of associations' worth of decoding,
checking and fsync in pynetdicom's threads; inside igrtd they would share its
one interpreter lock with the STOP path (the interlock-to-STOP budget is 3 ms)
and a fault in a parser would share its fate. Here a DICOM storm costs only
this process; igrtd reads what was stored through the archive's index.

Every association admitted or rejected and every instance stored or refused
is audited in this service's own hash-chained audit log (storage_dir/audit):
the refusal with its DICOM status and one line naming the value and the rule.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from daemon.audit import AuditLog
from daemon.config import ConfigError, load_config
from daemon.config_dicom import DicomConfig
from daemon.dicom_archive import ArchiveError, Conflict, DicomArchive
from daemon.dicom_export import QueueError, start_exporter
from daemon.sdnotify import notify
from daemon.session_beacon import read_beacon
from drivers.dicom_scp import (
    STATUS_SUCCESS,
    DatasetDecoder,
    Peer,
    ReceivedInstance,
    StorageServer,
)
from imaging.dicom_instances import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STORED_CLASSES,
    InstanceFacts,
    InstanceRefused,
    check_instance,
    is_uid,
)
from imaging.dicom_safe import DicomFileError, decoded, one_line

log = logging.getLogger("igrt.dicom")


class StorageService:
    """What igrt does with DICOM peers' associations and instances (the policy)."""

    def __init__(self, config: DicomConfig, archive: DicomArchive, audit: AuditLog) -> None:
        self._senders = config.senders()
        self._imaging = config.imaging_peers()
        self._max_bytes = config.max_instance_mb * 1024 * 1024
        self._archive = archive
        self._audit = audit  # appends from pynetdicom's threads: AuditLog locks itself
        # association -> the series it stored instances of, until it ends
        self._sent: dict[int, set[str]] = {}
        self._sent_lock = threading.Lock()

    def _record(self, event: str, actor: str, **details: object) -> None:
        self._audit.append(event, actor, **details)

    def admit(self, peer: Peer) -> str | None:
        allowed_from = self._senders.get(peer.ae_title)
        if allowed_from is None:
            reason = f"calling AE title {peer.ae_title[:16]!r} is not a peer allowed to send"
        elif allowed_from != peer.address:
            reason = (f"calling AE title {peer.ae_title!r} called from {peer.address}, "
                      f"configured for {allowed_from}")
        else:
            return None
        self.rejected(peer, reason)
        return reason

    def rejected(self, peer: Peer, reason: str) -> None:
        self._record("dicom.association_rejected", f"dicom:{peer.ae_title[:16]}",
                     address=peer.address, reason=reason)

    def released(self, peer: Peer, association: int) -> None:
        """The series this association stored are, to their sender, sent: say so in the
        index, where igrtd looks for complete daily series (daemon/daily_series.py)."""
        with self._sent_lock:
            series = self._sent.pop(association, set())
        if series:
            try:
                self._archive.mark_sent(sorted(series))
            except ArchiveError as exc:
                log.warning("cannot mark series sent: %s", exc)

    def closed(self, association: int) -> None:
        with self._sent_lock:  # aborted or dropped: what it stored is not known sent
            self._sent.pop(association, None)

    def _check_session(self, facts: InstanceFacts) -> None:
        """An image from the room's imaging system is of the patient igrt is set up
        for (daemon/session_beacon.py), or refused for the operator to see now."""
        session = read_beacon(self._archive.directory)
        if session is None:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, "no treatment session is open in "
                                  "igrt: the room's imaging system sends images of the "
                                  "patient being treated")
        if facts.patient_id != session.patient_id:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, f"PatientID {facts.patient_id!r} "
                                  "is not the patient of the session open in igrt "
                                  f"({session.patient_id!r})")
        if facts.frame_of_reference_uid == session.frame_of_reference_uid:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, "the image is in the plan's frame "
                                  f"of reference {session.frame_of_reference_uid}: a daily "
                                  "image has the imaging system's own")

    def echoed(self, peer: Peer) -> None:
        log.info("C-ECHO from %s at %s", peer.ae_title, peer.address)

    def store(self, instance: ReceivedInstance, decode: DatasetDecoder) -> int:
        actor = f"dicom:{instance.peer.ae_title}"
        try:
            if len(instance.part10) > self._max_bytes:
                raise InstanceRefused(STATUS_OUT_OF_RESOURCES,
                                      f"instance of {len(instance.part10)} bytes, limit "
                                      f"{self._max_bytes} bytes (dicom.max_instance_mb)")
            try:
                ds = decoded(decode, "the received dataset")
            except DicomFileError as exc:
                raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, str(exc)) from None
            facts = check_instance(ds, instance.sop_class_uid)
            if instance.peer.ae_title in self._imaging and facts.modality == "CT":
                self._check_session(facts)
            try:
                stored = self._archive.keep(facts, instance.part10, instance.peer.ae_title)
            except Conflict as exc:
                raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, str(exc)) from None
        except InstanceRefused as exc:
            self._record("dicom.instance_refused", actor, address=instance.peer.address,
                         sop_class=instance.sop_class_uid, status=f"0x{exc.status:04X}",
                         reason=exc.reason, **_named(instance))
            return exc.status
        except ArchiveError as exc:
            self._record("dicom.instance_refused", actor, address=instance.peer.address,
                         sop_class=instance.sop_class_uid,
                         status=f"0x{STATUS_OUT_OF_RESOURCES:04X}", reason=one_line(str(exc)),
                         **_named(instance))
            return STATUS_OUT_OF_RESOURCES
        with self._sent_lock:
            self._sent.setdefault(instance.association, set()).add(facts.series_uid)
        self._record("dicom.instance_stored", actor, sop_instance=facts.sop_instance_uid,
                     sop_class=facts.sop_class_uid, patient_id=facts.patient_id,
                     series=facts.series_uid, frame_of_reference=facts.frame_of_reference_uid,
                     bytes=stored.size, sha256=stored.sha256)
        return STATUS_SUCCESS


def _named(instance: ReceivedInstance) -> dict[str, str]:
    """The refused instance's SOP Instance UID as its C-STORE request named it, when
    that is a well-formed UID: `igrtctl dicom retrieve` tells which instance of a
    retrieve was refused, and why, by it."""
    uid = instance.affected_sop_instance_uid.strip()
    return {"sop_instance": uid} if is_uid(uid) else {}


def storage_dir(config_dicom: DicomConfig, state_dir: Path) -> Path:
    return config_dicom.archive_dir(state_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="igrt-dicomd",
                                 description="igrt's DICOM storage service (docs/dicom.md)")
    ap.add_argument("--config", type=Path, required=True, help="the room configuration")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="igrt-dicomd: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own tracebacks and chatter
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"igrt-dicomd: {exc.path}: {p}", file=sys.stderr)
        return 2
    if config.dicom is None:
        print(f"igrt-dicomd: {args.config}: no dicom section; nothing to serve", file=sys.stderr)
        return 2
    directory = storage_dir(config.dicom, config.state_dir)
    try:
        archive = DicomArchive(directory)
    except ArchiveError as exc:
        print(f"igrt-dicomd: {exc}", file=sys.stderr)
        return 1
    audit = AuditLog(directory / "audit")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        audit.open()
        d = config.dicom
        server = StorageServer(StorageService(d, archive, audit), ae_title=d.ae_title,
                               bind=d.bind, port=d.port, sop_classes=list(STORED_CLASSES),
                               max_associations=d.max_associations)
        try:
            server.start()
        except OSError as exc:
            print(f"igrt-dicomd: cannot listen on {d.bind}:{d.port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        try:
            exporter = start_exporter(d, directory, audit, stop)
        except QueueError as exc:
            server.stop()
            print(f"igrt-dicomd: {exc}", file=sys.stderr)
            return 1
        audit.append("dicom.service_started", "system", ae_title=d.ae_title, bind=d.bind,
                     port=server.port, peers=[p.ae_title for p in d.peers])
        notify(f"READY=1\nSTATUS=listening on {d.bind}:{server.port} as {d.ae_title}")
        print(f"igrt-dicomd: listening on {d.bind}:{server.port} as {d.ae_title}",
              file=sys.stderr, flush=True)
        stop.wait()
        server.stop()
        if exporter is not None:
            exporter.join(5.0)
        audit.append("dicom.service_stopped", "system")
    finally:
        audit.close()
        archive.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
