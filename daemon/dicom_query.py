"""What igrt asks a PACS and what it makes of the answers (docs/dicom.md,
"Query/retrieve from a PACS"). The wire is drivers/dicom_qr.py; this module
is the policy: the Patient Root keys of each level, walked hierarchically
(patient -> studies -> series -> instances, the form every Query/Retrieve SCP
must support), and the answers checked as the outside input they are.

Every answer is decoded inside the same guard as a received dataset
(imaging/dicom_safe.py), validated by a pydantic model (UIDs digits and dots
of at most 64 characters, counts non-negative, texts bounded and printable)
and must carry the PatientID that was asked for, exactly: a PACS matching
loosely (case, wildcards) could otherwise hand over another patient's plan.
The number of matches read is bounded; beyond it the query is refused, not
cut short silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydicom.dataset import Dataset

from daemon.config_dicom import DicomConfig
from drivers.dicom_qr import MoveStatus, QueryRetrieveScu, RemoteAE
from imaging.dicom_instances import UID_PATTERN, is_uid
from imaging.dicom_safe import DicomFileError, decoded, one_line

MAX_MATCHES = 500  # patients, studies or series in one answer: far beyond one patient's
MAX_INSTANCES = 5000  # instances of one retrieve (a 4D CT of 10 phases x 300 slices fits)

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
Uid = Annotated[str, StringConstraints(max_length=64, pattern=UID_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=324)]  # PN is 5 x 64 plus separators
Count = Annotated[int, Field(ge=0, le=10_000_000)]


class QueryError(Exception):
    """The PACS's answer cannot be used, or does not hold what was asked (one line)."""


class QueryConfigError(Exception):
    """The room configuration names no usable PACS (one line)."""


def check_patient_id(text: str) -> str:
    """A PatientID to ask for: exact (no wildcard), 1-64 printable characters; ValueError."""
    if not text or len(text) > 64 or not text.isprintable() or text != text.strip():
        raise ValueError(f"patient ID {text[:70]!r}: 1-64 printable characters, no leading "
                         "or trailing spaces")
    if any(c in text for c in "*?\\"):
        raise ValueError(f"patient ID {text!r}: '*', '?' and '\\' are not allowed (a "
                         "wildcard could match another patient)")
    return text


def check_uid(text: str, what: str) -> str:
    """A UID given on the command line; ValueError naming `what`."""
    if not is_uid(text):
        raise ValueError(f"{what} {text[:70]!r} is not a UID (digits and dots, at most 64 "
                         "characters)")
    return text


def query_peer(config: DicomConfig, name: str | None) -> RemoteAE:
    """The PACS to query: the peer named `name`, else the one peer with role `query`."""
    peers = config.query_peers()
    if name is not None:
        chosen = [p for p in peers if p.ae_title == name]
        if not chosen:
            raise QueryConfigError(f"no peer {name!r} with role query in the dicom section "
                                   f"(query peers: {', '.join(p.ae_title for p in peers) or 'none'})")
    elif len(peers) == 1:
        chosen = peers
    elif not peers:
        raise QueryConfigError("no PACS configured: no peer in the dicom section has role query "
                               "(docs/dicom.md, Query/retrieve from a PACS)")
    else:
        raise QueryConfigError("several peers have role query ("
                               f"{', '.join(p.ae_title for p in peers)}): choose one with --peer")
    peer = chosen[0]
    assert peer.port is not None  # the config refuses a query peer without a port
    return RemoteAE(peer.ae_title, peer.host, peer.port)


# ---------------------------------------------------------------- answers
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PatientMatch(_Answer):
    patient_id: Text
    patient_name: Text = ""
    studies: Count | None = None


class StudyMatch(_Answer):
    patient_id: Text
    study_uid: Uid
    date: Text = ""
    description: Text = ""
    modalities: list[Annotated[str, StringConstraints(max_length=16)]] = []
    instances: Count | None = None


class SeriesMatch(_Answer):
    patient_id: Text
    study_uid: Uid
    series_uid: Uid
    modality: Annotated[str, StringConstraints(max_length=16)] = ""
    description: Text = ""
    instances: Count | None = None
    frame_of_reference_uid: Uid | None = None


class InstanceMatch(_Answer):
    patient_id: Text
    study_uid: Uid
    series_uid: Uid
    sop_instance_uid: Uid
    sop_class_uid: Uid | None = None
    instance_number: int | None = None


A = TypeVar("A", PatientMatch, StudyMatch, SeriesMatch, InstanceMatch)

# field -> (DICOM keyword, how its value is read)
_KEYS: dict[str, tuple[str, str]] = {
    "patient_id": ("PatientID", "text"),
    "patient_name": ("PatientName", "text"),
    "studies": ("NumberOfPatientRelatedStudies", "int"),
    "study_uid": ("StudyInstanceUID", "text"),
    "date": ("StudyDate", "text"),
    "description": ("StudyDescription", "text"),
    "modalities": ("ModalitiesInStudy", "list"),
    "instances": ("NumberOfStudyRelatedInstances", "int"),
    "series_uid": ("SeriesInstanceUID", "text"),
    "modality": ("Modality", "text"),
    "frame_of_reference_uid": ("FrameOfReferenceUID", "text"),
    "sop_instance_uid": ("SOPInstanceUID", "text"),
    "sop_class_uid": ("SOPClassUID", "text"),
    "instance_number": ("InstanceNumber", "int"),
}
# The same field under another keyword at series level.
_SERIES_KEYS = {"description": ("SeriesDescription", "text"),
                "instances": ("NumberOfSeriesRelatedInstances", "int")}


def _value(ds: Dataset, keyword: str, kind: str) -> object:
    raw = ds.get(keyword)
    if raw is None or raw == "" or (kind == "list" and len(raw) == 0):
        return None
    if kind == "list":
        return [str(v).strip() for v in (raw if not isinstance(raw, str) else [raw])][:64]
    if kind == "int":
        try:
            return int(str(raw).strip())
        except ValueError:
            return str(raw)[:70]  # let the model name it
    return str(raw).strip()


def _parse(ds: Dataset, model: type[A], level: Level) -> A:
    keys = {**_KEYS, **(_SERIES_KEYS if level == "SERIES" else {})}
    try:
        ds = decoded(lambda: ds, "the PACS's C-FIND answer")
        fields = {name: _value(ds, *keys[name]) for name in model.model_fields}
    except DicomFileError as exc:
        raise QueryError(str(exc)) from None
    present = {k: v for k, v in fields.items() if v is not None}
    try:
        return model.model_validate(present)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        keyword = keys.get(where, (where, ""))[0]
        raise QueryError(one_line(f"the PACS answered an unusable {level.lower()}-level match: "
                                  f"{keyword} {first.get('input')!r}: {first['msg']}")) from None


def _identifier(level: Level, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class Pacs:
    """Queries to one PACS for one patient's objects, answers checked."""

    def __init__(self, scu: QueryRetrieveScu, peer: RemoteAE) -> None:
        self._scu = scu
        self.peer = peer

    def _find(self, level: Level, keys: dict[str, str], model: type[A], patient_id: str,
              limit: int = MAX_MATCHES) -> list[A]:
        result = self._scu.find(_identifier(level, keys), max_matches=limit)
        if result.truncated:
            raise QueryError(f"PACS {self.peer.ae_title} answered more than {limit} "
                             f"{level.lower()}-level matches; igrt reads no further")
        matches = [_parse(ds, model, level) for ds in result.matches]
        for m in matches:
            got = m.patient_id
            if got != patient_id:
                raise QueryError(f"PACS {self.peer.ae_title} answered a query for patient "
                                 f"{patient_id!r} with PatientID {got!r}; igrt uses exact "
                                 "matches only")
        return matches

    def patients(self, patient_id: str) -> list[PatientMatch]:
        return self._find("PATIENT", {"PatientID": patient_id, "PatientName": "",
                                      "NumberOfPatientRelatedStudies": ""},
                          PatientMatch, patient_id)

    def studies(self, patient_id: str, study_uid: str = "") -> list[StudyMatch]:
        found = self._find(
            "STUDY", {"PatientID": patient_id, "StudyInstanceUID": study_uid, "StudyDate": "",
                      "StudyDescription": "", "ModalitiesInStudy": "",
                      "NumberOfStudyRelatedInstances": ""}, StudyMatch, patient_id)
        if study_uid and any(s.study_uid != study_uid for s in found):
            raise QueryError(f"PACS {self.peer.ae_title} answered a query for study "
                             f"{study_uid} with another study")
        return found

    def series(self, patient_id: str, study_uid: str, *, modality: str = "",
               series_uid: str = "", frame_of_reference_uid: str = "") -> list[SeriesMatch]:
        keys = {"PatientID": patient_id, "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": series_uid, "Modality": modality,
                "SeriesDescription": "", "NumberOfSeriesRelatedInstances": ""}
        if frame_of_reference_uid:
            # Not a standard series-level key: a PACS may ignore it (the caller then
            # sees no frame of reference in the answer) but never uses a wrong one.
            keys["FrameOfReferenceUID"] = frame_of_reference_uid
        found = self._find("SERIES", keys, SeriesMatch, patient_id)
        for s in found:
            if (s.study_uid != study_uid or (series_uid and s.series_uid != series_uid)
                    or (modality and s.modality != modality)):
                raise QueryError(f"PACS {self.peer.ae_title} answered a series query with a "
                                 f"series that does not match it ({s.series_uid})")
        return found

    def patient_series(self, patient_id: str, *, modality: str = "", series_uid: str = "",
                       frame_of_reference_uid: str = "") -> list[SeriesMatch]:
        """The patient's series in every study (studies first, then each one's series)."""
        found: list[SeriesMatch] = []
        for study in self.studies(patient_id):
            found += self.series(patient_id, study.study_uid, modality=modality,
                                 series_uid=series_uid,
                                 frame_of_reference_uid=frame_of_reference_uid)
            if len(found) > MAX_MATCHES:
                raise QueryError(f"patient {patient_id} has more than {MAX_MATCHES} series on "
                                 f"PACS {self.peer.ae_title}; igrt reads no further")
        return found

    def instances(self, series: SeriesMatch, sop_instance_uid: str = "",
                  limit: int = MAX_INSTANCES) -> list[InstanceMatch]:
        found = self._find(
            "IMAGE", {"PatientID": series.patient_id, "StudyInstanceUID": series.study_uid,
                      "SeriesInstanceUID": series.series_uid,
                      "SOPInstanceUID": sop_instance_uid, "SOPClassUID": "",
                      "InstanceNumber": ""}, InstanceMatch, series.patient_id, limit)
        for i in found:
            if (i.series_uid != series.series_uid or i.study_uid != series.study_uid
                    or (sop_instance_uid and i.sop_instance_uid != sop_instance_uid)):
                raise QueryError(f"PACS {self.peer.ae_title} answered an instance query with "
                                 f"an instance that does not match it ({i.sop_instance_uid})")
        return found

    def move(self, what: InstanceMatch | SeriesMatch | StudyMatch, destination: str,
             progress: Callable[[MoveStatus], None]) -> MoveStatus:
        """C-MOVE one study, series or instance to `destination` (Patient Root: the
        patient is part of the request)."""
        level: Level = "STUDY"
        keys = {"PatientID": what.patient_id, "StudyInstanceUID": what.study_uid}
        if isinstance(what, (SeriesMatch, InstanceMatch)):
            level = "SERIES"
            keys["SeriesInstanceUID"] = what.series_uid
        if isinstance(what, InstanceMatch):
            level = "IMAGE"
            keys["SOPInstanceUID"] = what.sop_instance_uid
        return self._scu.move(_identifier(level, keys), destination=destination,
                              progress=progress)
