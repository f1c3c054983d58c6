"""Files land where a user expects them.

Cases:
- `serve`'s audit log defaults to ``decisions.db`` in the per-user data directory
  (``$XDG_DATA_HOME/meshpilot``, else ``~/.local/share/meshpilot``; a relative XDG_DATA_HOME is
  ignored), which serve creates when missing, and nothing is written to the working
  directory; ``--db`` and the environment still win; ``serve --help`` says where;
- every output option of every command (files and directories) is checked when the command
  line is parsed: a file whose directory does not exist, or a directory whose parent does not
  exist, is one error line and exit status 2, before any work and with no folder created;
  a directory whose parent exists is created, and only it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import pytest

from controller.settings import default_store_path, load_settings, user_data_dir
from meshpilot.cli import build_parser, main
from meshpilot.commands.arg_types import output_dir, output_file
from meshpilot.commands.serve import build_loop


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MESHPILOT_"):
            monkeypatch.delenv(name)


# ---- serve's audit log -----------------------------------------------------------------------


def test_the_store_defaults_to_the_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_data_dir() == tmp_path / "data" / "meshpilot"
    assert load_settings().store.path == str(tmp_path / "data" / "meshpilot" / "decisions.db")


@pytest.mark.parametrize("xdg", [None, "", "relative/data"])
def test_without_an_absolute_xdg_data_home_the_store_is_under_local_share(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    expected = tmp_path / "home" / ".local" / "share" / "meshpilot" / "decisions.db"
    assert default_store_path() == str(expected)
    assert load_settings().store.path == str(expected)


def test_db_option_and_environment_still_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHPILOT_STORE__PATH", str(tmp_path / "env.db"))
    assert load_settings().store.path == str(tmp_path / "env.db")
    assert load_settings(store={"path": "x.db"}).store.path == "x.db"


def test_serve_creates_the_data_directory_and_writes_nothing_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_home = tmp_path / "data"  # missing, like on a fresh account
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.chdir(workdir)
    settings = load_settings(None, policy="proportional", sim={"scenarios": ["steady-80"]})
    with contextlib.ExitStack() as stack:
        loop, _ = build_loop(settings, stack)
        assert loop.store.path == str(data_home / "meshpilot" / "decisions.db")
    assert (data_home / "meshpilot" / "decisions.db").is_file()
    assert (data_home / "meshpilot").stat().st_mode & 0o777 == 0o700
    assert list(workdir.iterdir()) == []


def test_serve_help_says_where_the_store_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "$XDG_DATA_HOME/meshpilot or ~/.local/share/meshpilot" in text


# ---- output options --------------------------------------------------------------------------

MISSING = "missing"
"""A directory that does not exist under the test's tmp_path."""

CASES = [
    (["evaluate", "--policy", "equal", "--out", "{m}/report.json"], "--out"),
    (["evaluate", "--policy", "equal", "--plots", "{m}/plots"], "--plots"),
    (["simulate", "steady-80", "--policy", "equal", "--trace", "{m}/t.csv"], "--trace"),
    (["simulate", "steady-80", "--policy", "equal", "--plot", "{m}/p.png"], "--plot"),
    (["scenarios", "sample", "--out", "{m}/generated"], "--out"),
    (["scenarios", "show", "steady-80", "--plot", "{m}/p.png"], "--plot"),
    (["ensemble", "a.npz", "b.npz", "--out", "{m}/e.npz"], "--out"),
    (["prometheus-rules", "--out", "{m}/rules.yaml"], "--out"),
    (["train", "--out-dir", "{m}/runs"], "--out-dir"),
    (["train", "--tensorboard-dir", "{m}/tb"], "--tensorboard-dir"),
    (["lab", "load", "--out", "{m}/load.json"], "--out"),
]


@pytest.mark.parametrize(("argv", "option"), CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_an_output_under_a_missing_directory_fails_at_once_and_creates_nothing(
    argv: list[str],
    option: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / MISSING
    with pytest.raises(SystemExit) as stop:
        main([a.format(m=missing) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.count("\n") == 1, err
    assert f"argument {option}: directory {missing} does not exist" in err, err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_fails_before_any_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case of the issue: `evaluate --out /missing/dir/x.json` with a whole suite to run."""
    import meshpilot.commands.evaluate as evaluate

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluation started")

    monkeypatch.setattr(evaluate, "run_evaluation", no_work)
    out = tmp_path / "missing" / "dir" / "x.json"
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--policy", "ppo", "equal", "--seeds", "20", "--out", str(out)])
    assert stop.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_the_named_directory_is_created_but_not_its_parents(tmp_path: Path) -> None:
    code = main(
        ["scenarios", "sample", "--seed", "3", "--count", "1", "--out", str(tmp_path / "gen")]
    )
    assert code == 0
    assert [p.suffix for p in (tmp_path / "gen").iterdir()] == [".yaml"]


def test_output_types_refuse_what_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for bad in ("", str(tmp_path)):
        with pytest.raises(argparse.ArgumentTypeError):
            output_file(bad)
    for bad in ("", str(tmp_path / "file")):
        with pytest.raises(argparse.ArgumentTypeError):
            output_dir(bad)
    assert output_file(str(tmp_path / "new.json")) == str(tmp_path / "new.json")
    assert output_file("relative.json") == "relative.json"  # the working directory exists
    assert output_dir(str(tmp_path)) == str(tmp_path)


OUTPUT_DESTS = {"out", "out_dir", "plots", "plot", "trace", "tensorboard_dir"}


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_subparsers(sub)]
    return found


def test_every_output_option_of_every_command_is_checked() -> None:
    """A new --out option without the check would create folders again: none is missed."""
    seen = []
    for sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.dest in OUTPUT_DESTS:
                seen.append(f"{sub.prog} {action.option_strings}")
                assert action.type in (output_file, output_dir), seen[-1]
    assert len(seen) == len(CASES)
