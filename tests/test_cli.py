"""The command line: help on every command, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from tinygpt.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("tokenizer", "bench"):
        assert command in out


def test_unknown_option_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "tinygpt.cli", "--no-such-option"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
