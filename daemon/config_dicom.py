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

PeerRole = Literal["send", "query", "export"]


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
                                  "igrt stores registrations to it")

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
        return self

    def senders(self) -> dict[str, str]:
        """AE title -> the address it must call from, for peers allowed to store to igrt."""
        return {p.ae_title: p.host for p in self.peers if "send" in p.roles}
