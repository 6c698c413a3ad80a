"""The room configuration's dicom section (daemon/config_dicom.py): a typo in an
AE title or an address is a one-line error at start, never a node that admits
the wrong caller."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from daemon.config_dicom import DicomConfig


def _config(**over: Any) -> DicomConfig:
    base: dict[str, Any] = {"peers": [{"ae_title": "TPS", "host": "10.0.0.5", "roles": ["send"]}]}
    base.update(over)
    return DicomConfig.model_validate(base)


def test_a_sender_is_allowed_from_its_address() -> None:
    assert _config().senders() == {"TPS": "10.0.0.5"}


@pytest.mark.parametrize("title", ["", " ", "A" * 17, "BAD\\AE", "TAB\tAE", " LEAD"])
def test_an_ae_title_outside_dicom_rules_is_refused(title: str) -> None:
    with pytest.raises(ValidationError):
        _config(ae_title=title)


def test_a_peer_named_by_host_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IP address"):
        _config(peers=[{"ae_title": "TPS", "host": "tps.example", "roles": ["send"]}])


def test_an_outbound_peer_without_a_port_is_refused() -> None:
    with pytest.raises(ValidationError, match="need a port"):
        _config(peers=[{"ae_title": "RV", "host": "10.0.0.6", "roles": ["export"]}])


def test_a_peer_listed_twice_is_refused() -> None:
    peer = {"ae_title": "TPS", "host": "10.0.0.5", "roles": ["send"]}
    with pytest.raises(ValidationError, match="listed twice"):
        _config(peers=[peer, peer])


def test_a_peer_with_igrts_own_title_is_refused() -> None:
    with pytest.raises(ValidationError, match="own AE title"):
        _config(peers=[{"ae_title": "IGRT", "host": "10.0.0.5", "roles": ["send"]}])


def test_a_non_integer_port_is_refused() -> None:
    with pytest.raises(ValidationError):
        _config(port=11112.5)


def test_an_export_retry_maximum_below_the_initial_wait_is_refused() -> None:
    with pytest.raises(ValidationError, match="export_retry_max_s 5 is below"):
        _config(export_retry_initial_s=10.0, export_retry_max_s=5.0)


def test_an_imaging_peer_that_may_not_send_is_refused() -> None:
    with pytest.raises(ValidationError, match="role imaging needs role send"):
        _config(peers=[{"ae_title": "CBCT", "host": "10.0.0.6", "roles": ["imaging"]}])
