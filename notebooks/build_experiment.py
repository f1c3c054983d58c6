"""Writes notebooks/experiment.ipynb from the cells below (kept as code so diffs stay readable).

Run `python notebooks/build_experiment.py` after editing a cell; the test suite executes the
notebook end to end (tests/notebooks/test_experiment_notebook.py).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

CELLS: list[tuple[str, str]] = [
    (
        "markdown",
        "# meshpilot experiment: train small, evaluate, plot\n\n"
        "Trains a tiny PPO policy on two suite scenarios, evaluates it next to the static "
        "baselines and the oracle on the same seeds and arrival traces, and plots the "
        "bad-request fraction. Scale `TOTAL_STEPS`, `SEEDS` and `DURATION_S` up for a real "
        "experiment (the shipped policy's command is in `docs/benchmarks.md`).",
    ),
    (
        "code",
        "import json, os, tempfile\n"
        "from pathlib import Path\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "from meshpilot.cli import main as meshpilot\n\n"
        "TOTAL_STEPS = int(os.environ.get('MESHPILOT_NB_STEPS', '2048'))\n"
        "SEEDS = int(os.environ.get('MESHPILOT_NB_SEEDS', '2'))\n"
        "DURATION_S = float(os.environ.get('MESHPILOT_NB_DURATION_S', '300'))\n"
        "SCENARIOS = ['steady-80', 'latency-spike']\n"
        "work = Path(os.environ.get('MESHPILOT_NB_OUT') or tempfile.mkdtemp(prefix='mp-nb-'))\n"
        "work",
    ),
    (
        "code",
        "rc = meshpilot(['train', *SCENARIOS, '--total-steps', str(TOTAL_STEPS), '--n-envs', '2',\n"
        "                '--n-steps', '256', '--batch-size', '128', '--episode-steps', '60',\n"
        "                '--members', '1', '--imitation-steps', '0', '--bc-lr', '0',\n"
        "                '--out-dir', str(work / 'runs'), '--no-progress'])\n"
        "assert rc == 0\n"
        "run_dir = sorted((work / 'runs').iterdir())[-1]\n"
        "sorted(p.name for p in run_dir.iterdir())",
    ),
    (
        "code",
        "policies = [f\"ppo:{run_dir / 'policy.npz'}\", 'proportional', 'sqrt', 'oracle']\n"
        "rc = meshpilot(['evaluate', '--scenarios', *SCENARIOS, '--policy', *policies,\n"
        "                '--seeds', str(SEEDS), '--duration-s', str(DURATION_S),\n"
        "                '--out', str(work / 'eval.json'), '--plots', str(work / 'plots'),\n"
        "                '--quiet'])\n"
        "assert rc == 0\n"
        "results = json.loads((work / 'eval.json').read_text())\n"
        "sorted(results)",
    ),
    (
        "code",
        "fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(5 * len(SCENARIOS), 3.5))\n"
        "for ax, scenario in zip(axes, SCENARIOS):\n"
        "    rows = results[scenario]\n"
        "    names = list(rows)\n"
        "    ax.bar(range(len(names)), [rows[n]['bad_fraction'] for n in names])\n"
        "    ax.set_xticks(range(len(names)), [n.split(':')[0] for n in names], rotation=30)\n"
        "    ax.set_title(scenario)\n"
        "    ax.set_ylabel('bad-request fraction')\n"
        "fig.tight_layout()\n"
        "fig.savefig(work / 'bad_fraction.png', dpi=100)\n"
        "for scenario in SCENARIOS:\n"
        "    for name, row in results[scenario].items():\n"
        "        assert row['n_seeds'] == SEEDS, (scenario, name)\n"
        "        assert 0.0 <= row['bad_fraction'] <= 1.0, (scenario, name)\n"
        "        label = name.split(':')[0]\n"
        "        bad, p99 = row['bad_fraction'], row['p99_ms']\n"
        "        print(f'{scenario:15s} {label:12s} bad={bad:.4f} p99={p99:.0f} ms')",
    ),
    (
        "code",
        "from IPython.display import Image, display\n"
        "display(Image(filename=str(run_dir / 'learning_curve.png')))\n"
        "display(Image(filename=str(work / 'bad_fraction.png')))",
    ),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for kind, source in CELLS:
        maker = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(maker(source))
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("experiment.ipynb")
    nbformat.write(build(), out)
    print(out)
