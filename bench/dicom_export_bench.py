"""Export to record-and-verify (issue 14 item 9): how long after a verified move
the REG is held by the R&V system.

Orthanc (the R&V stand-in) and igrt-dicomd run as real processes on loopback.
Each sample starts where igrtd's part starts after `verified`: the REG written
into the outbox (daemon/dicom_outbox.py:write_to_outbox, with its fsyncs, as
igrtd runs it in a thread), and ends when Orthanc's REST API finds the
instance. In between: igrt-dicomd's look at the outbox (every 0.2 s, so about
0.1 s of the figure on average), its checks, the queue commit, the C-STORE and
Orthanc's own storage.

    dicom_export_after_verify_s           median
    dicom_export_after_verify_p50_s / _max_s, _samples (make bench-long: _p99_s)
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.stats import samples, tail_figures
from daemon.dicom_outbox import VerifiedRegistration, write_to_outbox
from sim.broker import free_port
from sim.dicom_node import DicomServiceProcess
from sim.pacs import Orthanc, running_orthanc

AE = "IGRT_BENCH"
SHIFT = ((1.0, 0.0, 0.0, 3.0), (0.0, 1.0, 0.0, -2.0), (0.0, 0.0, 1.0, 1.5), (0.0, 0.0, 0.0, 1.0))


def _held(rv: Orthanc, sop_instance_uid: str) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{rv.http_port}/tools/lookup",
                                 data=sop_instance_uid.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bool(json.loads(resp.read()))


def _dicomd(tmp: Path, rv: Orthanc) -> DicomServiceProcess:
    config = {
        "room": "bench", "state_dir": str(tmp / "state"), "couch": {"port": "/dev/null"},
        "users": [{"name": "alice", "role": "therapist"}],
        "dicom": {"ae_title": AE, "port": free_port(),
                  "peers": [{"ae_title": rv.aet, "host": "127.0.0.1", "port": rv.dicom_port,
                             "roles": ["export"]}]},
    }
    path = tmp / "room.json"
    path.write_text(json.dumps(config))
    return DicomServiceProcess(path, tmp / "igrt-dicomd.log").start(timeout=30.0)


def run() -> dict[str, float]:
    n = samples(20)
    values: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with running_orthanc(tmp, peers={"igrt": (AE, "127.0.0.1", 11112)}) as rv:
            dicomd = _dicomd(tmp, rv)
            try:
                for i in range(n):
                    reg = VerifiedRegistration("bench", f"prop-{i}", f"conf-{i}", "alice",
                                               "PAT-BENCH", "1.2.826.0.1.3680043.8.498.5",
                                               f"IMG-{i}", SHIFT, time.time())
                    t0 = time.perf_counter()
                    write_to_outbox(reg, tmp / "state" / "dicom")
                    while not _held(rv, reg.sop_instance_uid):
                        if time.perf_counter() - t0 > 30:
                            raise RuntimeError(f"REG {i} not in Orthanc within 30 s")
                        time.sleep(0.005)
                    values.append(time.perf_counter() - t0)
                    time.sleep(0.05 * (i % 5))  # land at different points of the poll period
            finally:
                dicomd.stop()
                rv.proc.kill()  # its graceful stop takes 3 s; nothing more is read from it
    return {"dicom_export_after_verify_s": statistics.median(values),
            **tail_figures("dicom_export_after_verify", "s", values)}
