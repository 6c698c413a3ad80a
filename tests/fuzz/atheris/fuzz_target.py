"""atheris (libFuzzer, coverage-guided) harness for one igrt fuzz target.

    python tests/fuzz/atheris/fuzz_target.py TARGET [libFuzzer options and corpus dirs]

TARGET is a name in tests/fuzz/targets.py TARGETS (strict_json, mqtt_command,
local_line, config, reg_file, couch_frames, plc_registers). The property is
the same `check_*` the hypothesis tests and the corpus replay use; a violation
raises, and libFuzzer writes the input to its -artifact_prefix (make fuzz
points that at tests/fuzz/corpus/TARGET/, so the replay test keeps it).
Run by `make fuzz` only (tests/fuzz/atheris/run_all.py); needs the optional
extra: pip install -e '.[fuzz]'.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import atheris

PRODUCTION_MODULES = ("safety.strict_json", "safety.interlocks", "daemon.config",
                      "daemon.console.tokens", "daemon.control", "daemon.plc_link",
                      "drivers.couch_protocol", "drivers.plc", "imaging.dicom_reg")

with atheris.instrument_imports(include=["safety", "daemon", "drivers", "imaging"]):
    # Imported here, instrumented, so libFuzzer sees coverage of production code.
    for name in PRODUCTION_MODULES:
        importlib.import_module(name)

from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer args]; TARGET one of "
                 f"{', '.join(sorted(TARGETS))}")
    target = TARGETS[sys.argv[1]]
    # Drivers log every refused value; millions of runs need none of it on the terminal.
    logging.getLogger().addHandler(logging.NullHandler())

    def test_one_input(data: bytes) -> None:
        target.check(target.from_bytes(data))

    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
