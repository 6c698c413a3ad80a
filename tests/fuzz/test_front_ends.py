"""The command-line front ends on the corpus: what a user sees for a hostile file
is one line and an exit code, never a traceback or library chatter.

`igrtd --check-config FILE` and `igrtctl reg show FILE` run in process (their
`main(argv)`), on every config and REG file in tests/fuzz/corpus/.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from .targets import corpus_files

CONFIGS = list(corpus_files("config"))
REGS = list(corpus_files("reg_file"))
USER_ERROR = 2  # both tools: exit 2 = the input was refused


def _assert_one_line_outcome(code: int, err: str, caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in err, err
    assert code in (0, USER_ERROR), f"exit {code}: {err}"
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, f"logged: {noisy[0].getMessage()[:200]}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_check_config_answers_a_corpus_config_with_problems_or_valid_never_a_traceback(
    path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from daemon.main import main

    code = main(["--check-config", str(path)])
    out, err = capsys.readouterr()
    _assert_one_line_outcome(code, err, caplog)
    if code == 0:
        assert "configuration is valid" in out
    else:
        assert err.strip() and all(line.startswith(str(path)) for line in err.splitlines()), err


@pytest.mark.parametrize("path", REGS, ids=[p.name for p in REGS])
def test_reg_show_answers_a_corpus_file_with_the_matrix_or_one_line(
    path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from daemon.igrtctl.main import main

    caplog.set_level(logging.WARNING)
    try:
        code = main(["reg", "show", str(path)])
    except RecursionError as exc:  # would reach the user as a traceback
        pytest.fail(f"igrtctl reg show raised RecursionError: {str(exc)[:100]}")
    _out, err = capsys.readouterr()
    _assert_one_line_outcome(code, err, caplog)
    if code != 0:
        assert len(err.strip().splitlines()) == 1, err
