"""Which patient the room is set up for, told by igrtd to igrt-dicomd.

The room's own imaging system (a DICOM peer with role `imaging`) sends images
of the patient on the couch. An image of another patient, or one sent while no
session is open, is a mix-up that the imaging system's operator must see at
once, as a failed C-STORE, not later as a line in igrtd's audit log. The
storage service runs in its own process and knows no session, so igrtd writes
the open session's patient and plan to `session.json` in the DICOM storage
directory whenever a session opens, and removes it when the session closes
and when igrtd starts (a session does not outlive igrtd).

The file is written to a temporary name and renamed into place, without
fsync: after a power cut igrtd's start removes it anyway. It is a few hundred
bytes, written on the event loop when a session opens or closes (never on
the motion path). The reader treats anything but a well-formed beacon as "no
session is known" and refuses the imaging system's images, saying why.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from daemon.proposals import TreatmentSession

log = logging.getLogger("igrt.dicom")

BEACON_FILE = "session.json"
MAX_BEACON_BYTES = 4096


@dataclass(frozen=True, slots=True)
class OpenSession:
    patient_id: str
    plan_uid: str
    frame_of_reference_uid: str


class SessionBeacon:
    """igrtd's side: keeps `directory/session.json` in step with the open session."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / BEACON_FILE

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)

    def __call__(self, session: TreatmentSession | None) -> None:
        if session is None:
            self.clear()
            return
        body = json.dumps({"patient_id": session.patient_id, "plan_uid": session.plan_uid,
                           "frame_of_reference_uid": session.frame_of_reference_uid})
        tmp = self.path.with_name(f".{BEACON_FILE}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body)
            os.replace(tmp, self.path)
        except OSError as exc:  # the imaging system's images are then refused, saying why
            log.warning("cannot write %s: %s", self.path, exc)


def read_beacon(directory: Path) -> OpenSession | None:
    """igrt-dicomd's side: the session igrtd has open, or None (none, or unreadable)."""
    try:
        with open(directory / BEACON_FILE, "rb") as f:
            raw = f.read(MAX_BEACON_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_BEACON_BYTES:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    patient, plan, frame = (doc.get(k) for k in ("patient_id", "plan_uid",
                                                 "frame_of_reference_uid"))
    if not (isinstance(patient, str) and isinstance(plan, str) and isinstance(frame, str)
            and patient and plan and frame):
        return None
    return OpenSession(patient, plan, frame)
