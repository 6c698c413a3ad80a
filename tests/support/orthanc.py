"""A real PACS (Orthanc) for tests: now `sim.pacs`, which the simulated clinic
uses too; this module keeps the tests' import path."""

from sim.pacs import ORTHANC_AET, Orthanc, PacsError, orthanc_binary, running_orthanc

__all__ = ["ORTHANC_AET", "Orthanc", "PacsError", "orthanc_binary", "running_orthanc"]
