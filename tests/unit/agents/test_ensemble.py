"""`meshpilot train --members N` (agents.training.ensemble); `meshpilot ensemble` on its own
is tests/unit/meshpilot/test_ensemble.py.

Cases:
- a tiny two-member job through the CLI trains both members (seeds seed and seed+1) in
  parallel processes, keeps each member's ordinary run directory under members/, and writes
  config.json, a learning curve and an ensemble policy.npz whose decisions are the decode of
  its members' mean action;
- resuming an ensemble run is refused with one clear line saying how to resume members.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshpilot.cli import main
from tests.unit.agents.ensemble_checks import assert_decides_members_mean
from tests.unit.agents.tiny_training import TINY_PPO

TINY = [
    "steady-80",
    *TINY_PPO,
    "--total-steps", "128",
    "--checkpoint-every", "0",
    "--exp-name", "ens",
    "--seed", "7",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--members", "2", "--out-dir", str(out)]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_members_train_as_ordinary_runs_and_export_one_ensemble(ensemble_run):
    run_dir = ensemble_run
    assert run_dir.name.startswith("steady-80__ens__7__")
    members = sorted((run_dir / "members").iterdir())
    assert [m.name.split("__")[1:3] for m in members] == [["ens-m0", "7"], ["ens-m1", "8"]]
    for m in members:
        assert (m / "policy.npz").is_file() and (m / "model.zip").is_file()
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["members"] == 2
    assert sorted(Path(x["run_dir"]).name for x in meta["members"]) == [m.name for m in members]
    assert all(x["seconds"] > 0 for x in meta["members"])
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert_decides_members_mean(
        run_dir / "policy.npz",
        [m / "policy.npz" for m in members],
        scenario="steady-80",
        seed=3,
        ticks=10,
    )


def test_resuming_an_ensemble_run_is_refused_with_one_line(ensemble_run, tmp_path, capsys):
    run_dir = ensemble_run
    resume = ["train", *TINY, "--members", "2", "--resume", str(run_dir)]
    assert main([*resume, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resume" in err and "meshpilot ensemble" in err
    assert not list(tmp_path.iterdir())
