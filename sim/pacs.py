"""A real PACS for the simulated clinic: Orthanc (Debian's `orthanc`, installed
by `make setup`), started on free loopback ports with its own configuration and
a storage folder of its own. It stands for the planning system and the PACS
that send to igrt, and for the record-and-verify system igrt exports to.

    from sim.pacs import running_orthanc

    with running_orthanc(tmp_path, peers={"igrt": ("IGRT", "127.0.0.1", 11112)}) as pacs:
        ids = [pacs.upload(path.read_bytes()) for path in files]
        pacs.store_to("igrt", ids)          # Orthanc C-STOREs them to igrt

Only Orthanc's own REST API is used (HTTP on loopback, no authentication: the
server accepts no remote access); the system's own Orthanc, if one runs, is
left alone.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sim.broker import free_port
from sim.parent_death import die_with_parent, stop_child

ORTHANC_AET = "ORTHANC_TEST"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


class PacsError(RuntimeError):
    """Orthanc did not do what was asked (one line)."""


@dataclass
class Orthanc:
    aet: str
    http_port: int
    dicom_port: int
    directory: Path
    proc: subprocess.Popen[bytes]

    def _call(self, method: str, path: str, body: bytes | None = None,
              timeout_s: float = 60.0) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise PacsError(f"Orthanc {method} {path}: HTTP {exc.code} {detail}") from None
        except OSError as exc:
            raise PacsError(f"Orthanc {method} {path}: {exc}") from None
        return json.loads(raw) if raw else None

    def upload(self, part10: bytes) -> str:
        """Store one DICOM file in Orthanc; its Orthanc instance id."""
        answer = self._call("POST", "/instances", part10)
        if not isinstance(answer, dict) or "ID" not in answer:
            raise PacsError(f"Orthanc did not take the instance: {answer!r}")
        return str(answer["ID"])

    def store_to(self, modality: str, ids: list[str]) -> object:
        """Have Orthanc C-STORE the instances `ids` to a configured modality."""
        body = json.dumps({"Resources": ids, "Synchronous": True}).encode()
        return self._call("POST", f"/modalities/{modality}/store", body)

    def echo(self, modality: str) -> None:
        self._call("POST", f"/modalities/{modality}/echo", b"{}")

    def instances(self) -> list[str]:
        answer = self._call("GET", "/instances")
        return [str(i) for i in answer] if isinstance(answer, list) else []

    def series_uids(self, modality: str) -> list[str]:
        """The Series Instance UIDs of the series of `modality` Orthanc holds."""
        body = json.dumps({"Level": "Series", "Expand": True,
                           "Query": {"Modality": modality}}).encode()
        answer = self._call("POST", "/tools/find", body)
        if not isinstance(answer, list):
            return []
        return [str(i["MainDicomTags"]["SeriesInstanceUID"]) for i in answer
                if isinstance(i, dict)]

    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UID of every instance Orthanc holds (one per instance)."""
        answer = self._call("GET", "/instances?expand")
        if not isinstance(answer, list):
            return []
        return [str(i["MainDicomTags"]["SOPInstanceUID"]) for i in answer
                if isinstance(i, dict)]

    def download(self, orthanc_id: str) -> bytes:
        """The DICOM file Orthanc holds as instance `orthanc_id`."""
        url = f"http://127.0.0.1:{self.http_port}/instances/{orthanc_id}/file"
        try:
            with urllib.request.urlopen(url, timeout=60.0) as resp:
                return bytes(resp.read())
        except OSError as exc:
            raise PacsError(f"Orthanc GET {url}: {exc}") from None


@contextlib.contextmanager
def running_orthanc(directory: Path, *, aet: str = ORTHANC_AET,
                    peers: dict[str, tuple[str, str, int]] | None = None,
                    start_timeout_s: float = 30.0,
                    dicom_port: int | None = None) -> Iterator[Orthanc]:
    """Orthanc on free loopback ports (`dicom_port`: this DICOM port instead);
    `peers`: name -> (AE title, host, port)."""
    exe = orthanc_binary()
    if exe is None:
        raise PacsError("Orthanc is not installed (Debian package orthanc): run make setup")
    root = Path(directory) / "orthanc"
    (root / "storage").mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {
        "Name": "igrt-sim-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "TemporaryDirectory": str(root),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "Plugins": [],
        "DicomModalities": {name: {"AET": a, "Host": h, "Port": p, "AllowStore": True}
                            for name, (a, h, p) in (peers or {}).items()},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": False,
        "DicomScuTimeout": 30,
        "StableAge": 1,
    }
    conf = root / "orthanc.json"
    conf.write_text(json.dumps(config, indent=2))
    log = root / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "--logfile=" + str(root / "orthanc-internal.log"),
                                 str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent())  # noqa: PLW1509 - only prctl, see sim/parent_death.py
    pacs = Orthanc(aet, http_port, dicom_port, root, proc)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise PacsError(f"Orthanc exited at start ({proc.returncode}): "
                                f"{log.read_text(errors='replace')[-300:]}")
            try:
                pacs._call("GET", "/system", timeout_s=2.0)
                break
            except PacsError:
                if time.monotonic() > deadline:
                    raise PacsError(f"Orthanc did not answer within {start_timeout_s} s") \
                        from None
                time.sleep(0.1)
        yield pacs
    finally:
        stop_child(proc, 15.0)
