"""The command line's usage errors: one line on stderr naming the command and the option,
exit status 2, no usage block and no traceback, before any work starts.

Cases: negative seeds (simulate, train, evaluate's --first-seed), zero counts, out-of-range
ports, non-finite numbers, unknown subcommands, missing positionals, a malformed scenario.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshpilot.cli import main

BAD_INVOCATIONS = [
    (["simulate", "steady-80", "--seed", "-1"], "meshpilot simulate: error: argument --seed"),
    (["train", "--seed", "-1"], "meshpilot train: error: argument --seed"),
    (["train", "--n-envs", "0"], "meshpilot train: error: argument --n-envs"),
    (["train", "--total-steps", "many"], "meshpilot train: error: argument --total-steps"),
    (["evaluate", "--seeds", "0"], "meshpilot evaluate: error: argument --seeds"),
    (["evaluate", "--first-seed", "-3"], "meshpilot evaluate: error: argument --first-seed"),
    (["serve", "--port", "70000"], "meshpilot serve: error: argument --port"),
    (["serve", "--tick-s", "nan"], "meshpilot serve: error: argument --tick-s"),
    (["serve", "--speed", "-2"], "meshpilot serve: error: argument --speed"),
    (["bogus"], "meshpilot: error: argument COMMAND: invalid choice: 'bogus'"),
    (["simulate"], "meshpilot simulate: error: the following arguments are required"),
]


@pytest.mark.parametrize(("argv", "starts"), BAD_INVOCATIONS, ids=lambda a: " ".join(a))
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], starts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(starts), err
    assert "usage:" not in err and "Traceback" not in err


def test_a_malformed_scenario_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nduration_s: -5\nstep_s: 5\nslo_ms: 100\n")
    assert main(["simulate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("meshpilot simulate: error: "), err
    assert "bad.yaml" in err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    # `meshpilot ... | head -1`: the pipe closes before the command has printed everything
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshpilot.cli",
                "scenarios",
                "sample",
                "--count",
                "3",
                "--out",
                str(tmp_path / "out"),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""
    # like a shell tool killed by SIGPIPE it stops at the first line it cannot print
    assert len(list((tmp_path / "out").glob("*.yaml"))) == 1
