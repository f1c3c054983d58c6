"""`meshpilot ensemble`: combine policy files into one ensemble file.

Cases: the combined file serves the decode of its members' mean action and the command prints
a JSON summary (with the inputs hash, which the file carries too); an ensemble given as input
is flattened; one input, an input of another feature spec and a missing input exit 2 with one
line and write nothing. Training members end to end
(`meshpilot train --members`) is tests/unit/agents/test_ensemble.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.obs_extensions import extension_size
from agents.policy_file import inputs_hash, save_npz
from meshcore.features import FeatureSpec
from meshpilot.cli import main
from tests.unit.agents.ensemble_checks import assert_decides_members_mean


def _policy_file(path: Path, seed: int, spec: FeatureSpec | None = None) -> Path:
    """A random small network in the shipped file format (numpy only)."""
    spec = spec or FeatureSpec()
    rng = np.random.default_rng(seed)
    n_in = spec.obs_size + extension_size(spec)
    return save_npz(
        path,
        spec=spec,
        layers=[
            (rng.normal(size=(16, n_in)) * 0.3, rng.normal(size=16) * 0.3),
            (rng.normal(size=(spec.max_subsets, 16)) * 0.3, rng.normal(size=spec.max_subsets)),
        ],
        obs_mean=np.zeros(n_in),
        obs_var=np.ones(n_in),
        clip_obs=10.0,
        eps=1e-8,
    )


def _summary(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_combined_file_serves_the_members_mean_action(tmp_path, capsys):
    files = [_policy_file(tmp_path / f"p{s}.npz", s) for s in (1, 2)]
    out = tmp_path / "pair.npz"
    assert main(["ensemble", *map(str, files), "--out", str(out)]) == 0
    assert _summary(capsys) == {
        "out": str(out),
        "members": 2,
        "feature_spec": FeatureSpec().hash,
        "inputs_hash": inputs_hash(FeatureSpec()),
    }
    with np.load(out, allow_pickle=False) as data:
        assert str(data["inputs_hash"]) == inputs_hash(FeatureSpec())
    assert_decides_members_mean(out, files, scenario="diurnal-bursts", seed=0, ticks=8)

    third = _policy_file(tmp_path / "p3.npz", 3)
    triple = tmp_path / "triple.npz"
    assert main(["ensemble", str(out), str(third), "--out", str(triple)]) == 0
    assert _summary(capsys)["members"] == 3


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    one = _policy_file(tmp_path / "one.npz", 1)
    other = _policy_file(tmp_path / "other.npz", 2, FeatureSpec(slo_ms=500.0))
    out = tmp_path / "out.npz"
    cases = [
        ([str(one)], "at least two"),
        ([str(one), str(other)], "different feature specs"),
        ([str(one), str(tmp_path / "missing.npz")], "not found"),
    ]
    for inputs, message in cases:
        assert main(["ensemble", *inputs, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("meshpilot ensemble: error:") and message in err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
