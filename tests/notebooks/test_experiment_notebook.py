"""The experiment notebook runs end to end (train small, evaluate, plot) in a fresh kernel.

Cases: every cell executes without error; the notebook is in sync with its builder script;
it leaves a trained policy, an evaluation JSON with every policy and the plots behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "experiment.ipynb"


def test_notebook_matches_its_builder() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_experiment", NOTEBOOK.with_name("build_experiment.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = [c.source for c in module.build().cells]
    stored = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells]
    assert built == stored, "run `python notebooks/build_experiment.py` after editing cells"


def test_notebook_executes_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPILOT_NB_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()  # fmt: skip
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results) == {"steady-80", "latency-spike"}
    for rows in results.values():
        assert {"proportional", "sqrt", "oracle"} <= set(rows)
        assert any(name.startswith("ppo:") for name in rows)
    assert (tmp_path / "bad_fraction.png").stat().st_size > 0
    assert os.listdir(tmp_path / "plots")
