"""Daily images in over DICOM (issue 14 item 9), through the real processes:
igrt-dicomd receiving, igrtd proposing.

    dicom_store_ct_slices_per_s
        A 128-slice planning CT (256 x 256, 16 bit) C-STOREd to igrt-dicomd
        over loopback by one pynetdicom association: slices over the seconds
        from association request to release. Each slice is decoded, checked,
        written, fsynced, renamed and indexed before its response.
    dicom_last_slice_to_proposal_s (median), _p50_s / _max_s, _samples
        A daily CBCT (240 x 240 x 100) sent with storescu to igrt-dicomd while
        a session from the stored plan is open: from storescu's exit (the last
        slice answered and the association released) to igrtd's status showing
        the proposal bound to that series (polled every 20 ms). Includes
        igrtd's wait for the series to be complete and its registration in
        the worker process.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from bench.stats import samples, tail_figures
from daemon.control import ControlClient
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.broker import free_port
from sim.clinic import CBCT_AE, TPS_AE, export_daily_image, export_plan, send
from sim.dicom_node import DicomServiceProcess
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

IGRT_AE = "IGRT_BENCH"
PATIENT = "BENCH-0001"
ISO = (8.0, -12.0, 20.0)


def _store_rate(files: list[Path], port: int) -> float:
    datasets = [pydicom.dcmread(p) for p in files]
    ae = AE(ae_title=TPS_AE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=IGRT_AE)
    if not assoc.is_established:
        raise RuntimeError("igrt-dicomd did not accept the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0x0000:
                raise RuntimeError(f"C-STORE answered {status}")
    finally:
        assoc.release()
    return len(datasets) / (time.perf_counter() - t0)


def _proposal_for(sock: Path, series: str) -> bool:
    with ControlClient(sock, "alice") as c:
        st = c.call("status").get("result", {})
    p = st.get("proposal") or {}
    return bool(p.get("binding", {}).get("imaging_session_uid") == series)


def run() -> dict[str, Any]:
    from sim.imager import acquire_cbct, planning_ct
    from sim.phantom import make_phantom

    rng = np.random.default_rng(5)
    phantom = make_phantom(5)
    plan_ct = planning_ct(phantom, rng=rng)
    rates: list[float] = []
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_s, SimRoom(with_plc=True) as room:
        tmp = Path(tmp_s)
        port = free_port()
        cfg = room.room_config(tmp / "state", dicom={
            "ae_title": IGRT_AE, "port": port, "peers": [
                {"ae_title": TPS_AE, "host": "127.0.0.1", "roles": ["send"]},
                {"ae_title": CBCT_AE, "host": "127.0.0.1", "roles": ["send", "imaging"]}]})
        daemon = DaemonProcess(cfg, tmp / "state", tmp / "igrtd.log").start()
        dicomd = DicomServiceProcess(daemon.config_path, tmp / "igrt-dicomd.log").start()
        try:
            for i in range(3):  # a new planning CT each time: new UIDs, all of it stored
                planned = export_plan(tmp / f"tps{i}", plan_ct, PATIENT, ISO)
                ct = [p for p in planned.files if p.parent.name == "ct"]
                rates.append(_store_rate(ct, port))
                send([p for p in planned.files if p not in ct], "127.0.0.1", port, IGRT_AE,
                     TPS_AE)
            sock = daemon.socket_path
            with ControlClient(sock, "alice") as c:
                reply = c.call("open_session", patient_id=PATIENT, plan_uid=planned.plan_uid)
                if not reply.get("ok"):
                    raise RuntimeError(f"session open refused: {reply.get('error')}")
            couch = room.couch_pose
            model = CouchModel.default()
            world = PatientWorld.with_setup_error(ISO, "HFS", tuple(model.pivot),  # type: ignore[arg-type]
                                                  couch.plus(Pose(3.0, -2.0, 1.0, 0.5, 0, 0)))
            for i in range(samples(5, 20)):
                cbct = acquire_cbct(phantom, world.placement, couch, world.pivot, world.iso,
                                    world.patient_position, rng)
                ident = export_daily_image(tmp / f"cbct{i}", cbct, PATIENT)
                send(sorted((tmp / f"cbct{i}").glob("*.dcm")), "127.0.0.1", port, IGRT_AE,
                     CBCT_AE)
                t_sent = time.perf_counter()
                deadline = t_sent + 60
                while not _proposal_for(sock, str(ident.series_uid)):
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"no proposal for daily series {i} within 60 s")
                    time.sleep(0.02)
                delays.append(time.perf_counter() - t_sent)
        finally:
            dicomd.stop()
            daemon.stop()
    return {
        "dicom_store_ct_slices_per_s": statistics.median(rates),
        "dicom_store_ct_slices_per_s_samples": float(len(rates)),
        "dicom_last_slice_to_proposal_s": statistics.median(delays),
        **tail_figures("dicom_last_slice_to_proposal", "s", delays),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key} = {value}")
