"""The room configuration's `dicom` section: igrt's own Application Entity and
the clinic's DICOM peers it talks to (docs/dicom.md).

A peer is named by its AE title and the address it calls from: an association
is accepted only from a listed AE title calling from that peer's host, for a
service the peer is allowed (`send`: it may store instances to igrt). Outbound
peers (a PACS to query, a record-and-verify system to export to) also name a
port.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from daemon.config_sections import StrictModel

# DICOM PS3.5 AE title: 1-16 characters of the default repertoire, no backslash
# and no control characters; leading and trailing spaces are not significant and
# a title of spaces only is not allowed.
AE_TITLE_PATTERN = r"^[ -\[\]-~]{1,16}$"

PeerRole = Literal["send", "query", "export", "imaging"]


def _ae_title(v: str) -> str:
    if not v.strip():
        raise ValueError("an AE title of spaces only is not allowed")
    if v != v.strip():
        raise ValueError(f"AE title {v!r} has leading or trailing spaces")
    return v


class DicomPeer(StrictModel):
    ae_title: str = Field(pattern=AE_TITLE_PATTERN, description="the peer's AE title")
    host: str = Field(min_length=1, max_length=253,
                      description="the peer's IP address: associations are accepted only "
                      "from it, and outbound ones go to it")
    port: StrictInt | None = Field(default=None, ge=1, le=65535,
                                   description="the peer's DICOM port (outbound roles)")
    roles: list[PeerRole] = Field(min_length=1, description="send: may store instances to "
                                  "igrt; query: igrt queries and retrieves from it; export: "
                                  "igrt stores registrations to it; imaging: the room's "
                                  "imaging system, whose images must be of the patient of "
                                  "the session open in igrt")

    _title = field_validator("ae_title")(_ae_title)

    @field_validator("host")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address (a name could resolve to "
                             "another host than the one allowed)") from None

    @model_validator(mode="after")
    def _outbound_port(self) -> DicomPeer:
        if self.port is None and any(r in ("query", "export") for r in self.roles):
            raise ValueError(f"peer {self.ae_title}: roles {self.roles} need a port")
        if len(set(self.roles)) != len(self.roles):
            raise ValueError(f"peer {self.ae_title}: a role is listed twice")
        # What igrt retrieves from a PACS arrives as C-STOREs the PACS makes from
        # its AE title and host, admitted like any push. Saying so in the config
        # (rather than `query` quietly admitting the peer) keeps the allow-list of
        # who may store to igrt readable from the `send` roles alone.
        if "query" in self.roles and "send" not in self.roles:
            raise ValueError(f"peer {self.ae_title}: role query needs role send too (what igrt "
                             "retrieves arrives as C-STOREs from the peer's AE title and host)")
        if "imaging" in self.roles and "send" not in self.roles:
            raise ValueError(f"peer {self.ae_title}: role imaging needs role send too (the "
                             "imaging system stores its images to igrt)")
        return self


class DicomConfig(StrictModel):
    """igrt's DICOM node (the storage service, `igrt-dicomd`)."""

    ae_title: str = Field(default="IGRT", pattern=AE_TITLE_PATTERN,
                          description="igrt's own AE title (the called AE title it answers to)")
    bind: str = Field(default="127.0.0.1", description="address the storage service listens on")
    port: StrictInt = Field(default=11112, ge=1, le=65535)
    peers: list[DicomPeer] = Field(default_factory=list)
    max_associations: StrictInt = Field(default=4, ge=1, le=64,
                                        description="associations served at once; more are "
                                        "rejected (transient), so a storm cannot starve the host")
    max_instance_mb: StrictInt = Field(default=64, ge=1, le=2048,
                                       description="an instance larger than this is refused")
    storage_dir: Path | None = Field(default=None, strict=False,
                                     description="default: state_dir/dicom")
    auto_register: bool = Field(default=True, description="igrtd registers a complete daily "
                                "CT series of the open plan session's patient and proposes "
                                "the correction (a person still confirms)")
    registration_structure: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="ROI name (e.g. PTV) in the plan's structure set: registrations look in a "
        "cube about it (half its largest extent plus registration_margin_mm) instead of "
        "about the isocentre")
    registration_margin_mm: float = Field(default=15.0, ge=0.0, le=100.0,
                                          description="margin about registration_structure")
    series_quiet_s: float = Field(default=2.0, ge=0.2, le=120.0,
                                  description="a daily series counts as complete when no "
                                  "slice of it arrived for this long and it is one volume")
    export_retry_initial_s: float = Field(
        default=10.0, ge=0.1, le=3600.0,
        description="wait after a failed export to record-and-verify before the first "
        "retry; doubled after each further failure up to export_retry_max_s")
    export_retry_max_s: float = Field(
        default=600.0, ge=0.1, le=86400.0,
        description="longest wait between export retries (retries go on until delivered)")

    _title = field_validator("ae_title")(_ae_title)

    @field_validator("bind")
    @classmethod
    def _bind_ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None

    @model_validator(mode="after")
    def _unique_peers(self) -> DicomConfig:
        seen: set[str] = set()
        for p in self.peers:
            if p.ae_title in seen:
                raise ValueError(f"peer AE title {p.ae_title!r} listed twice")
            seen.add(p.ae_title)
        if self.ae_title in seen:
            raise ValueError(f"igrt's own AE title {self.ae_title!r} is also a peer's")
        if self.export_retry_max_s < self.export_retry_initial_s:
            raise ValueError(f"export_retry_max_s {self.export_retry_max_s:g} is below "
                             f"export_retry_initial_s {self.export_retry_initial_s:g}")
        return self

    def exporters(self) -> list[DicomPeer]:
        """Peers igrt stores its registrations to (record-and-verify), in config order."""
        return [p for p in self.peers if "export" in p.roles]

    def archive_dir(self, state_dir: Path) -> Path:
        """Where igrt-dicomd stores and igrtd reads (storage_dir, else state_dir/dicom)."""
        return self.storage_dir or state_dir / "dicom"

    def imaging_peers(self) -> frozenset[str]:
        """AE titles of the room's imaging systems (their CT images: the session's patient)."""
        return frozenset(p.ae_title for p in self.peers if "imaging" in p.roles)

    def query_peers(self) -> list[DicomPeer]:
        """Peers igrt queries and retrieves from (role `query`)."""
        return [p for p in self.peers if "query" in p.roles]

    def senders(self) -> dict[str, str]:
        """AE title -> the address it must call from, for peers allowed to store to igrt."""
        return {p.ae_title: p.host for p in self.peers if "send" in p.roles}
