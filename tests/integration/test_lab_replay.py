"""`meshpilot evaluate --mesh lab` end to end: a scenario replayed on a real lab, two policies.

One 40 s scenario (two versions, v2 starts answering 40 % 5xx at 15 s) runs through the real
command with ``equal`` and ``proportional``, on one lab (real Envoy, backends, Prometheus on
127.0.0.1) brought up and taken down by the command. Cases:

- the JSON has every field of the simulator's report for each policy, plus ``mesh: lab``;
- the error event shows: the 5xx fraction is what v2's share of 40 % over the last 25 s makes
  (well above the scenario's zero base rate), and the event was applied at 15 s;
- every split written is a valid one over the route's versions (0..100, summing to 100) and
  is the policy's own (equal: 50/50; proportional to capacity: 60/40), one per 5 s step from
  0 s; churn counts the one move away from the start split (60/40);
- no process of the lab is left once the command has returned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_binary

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DURATION_S = 40
SCENARIO = {
    "name": "replay-errors",
    "duration_s": 600,
    "step_s": 5,
    "slo_ms": 250,
    "load": {"rps": 120},
    "subsets": [
        {"name": "v1", "replicas": 3, "service_ms": 20},
        {"name": "v2", "replicas": 2, "service_ms": 20},
    ],
    "events": [{"at_s": 15, "subset": "v2", "set": {"error_rate": 0.4}}],
}
FIELDS = (
    "bad_fraction",
    "p99_ms",
    "mean_ms",
    "error_rate",
    "churn",
    "n_seeds",
    "bad_fraction_ci95",
    "p99_ms_ci95",
    "oracle_ratio",
    "requests",
    "seeds",
    "duration_s",
    "per_seed",
    "as_served",
)
SPLITS = {"equal": {"v1": 50, "v2": 50}, "proportional": {"v1": 60, "v2": 40}}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_binary("prometheus", "MESHPILOT_PROMETHEUS")
    work = tmp_path_factory.mktemp("replay")
    scenario = work / "replay-errors.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    out = work / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHPILOT_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TMPDIR"] = str(work)
    if "MESHPILOT_PROMETHEUS" in os.environ:
        env["MESHPILOT_PROMETHEUS"] = os.environ["MESHPILOT_PROMETHEUS"]
    cmd = [
        sys.executable, "-m", "meshpilot.cli", "evaluate", "--mesh", "lab",
        "--lab-duration", str(DURATION_S), "--scenarios", str(scenario),
        "--policy", "equal", "proportional", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the command takes its lab down on KeyboardInterrupt
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"meshpilot evaluate --mesh lab did not finish in 240 s:\n{output[-3000:]}")
    left = _processes_mentioning(str(work))
    assert not left, f"lab processes left running: {left}"
    assert proc.returncode == 0, output[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_every_field_of_the_simulators_report_is_there(report: dict[str, Any]) -> None:
    entries = report["replay-errors"]
    assert list(entries) == ["equal", "proportional"]
    for entry in entries.values():
        missing = [f for f in FIELDS if f not in entry]
        assert not missing, missing
        assert entry["mesh"] == "lab"
        assert entry["n_seeds"] == 1
        assert entry["duration_s"] == DURATION_S
        assert entry["requests"] > 0.8 * 120 * DURATION_S
        assert 0.0 <= entry["bad_fraction"] <= 1.0
        assert entry["p99_ms"] > 0 and entry["mean_ms"] > 0


def test_the_error_event_shows_in_the_5xx_fraction(report: dict[str, Any]) -> None:
    for policy, entry in report["replay-errors"].items():
        share = SPLITS[policy]["v2"] / 100
        expected = share * 0.4 * (DURATION_S - 15) / DURATION_S
        assert 0.6 * expected < entry["error_rate"] < 1.4 * expected, (policy, entry)
        assert entry["bad_fraction"] >= entry["error_rate"]
        (run,) = entry["lab_runs"]
        (event,) = run["events"]
        assert event["subset"] == "v2" and event["set"] == {"error_rate": 0.4}
        assert event["t_s"] == pytest.approx(15.0, abs=1.0)


def test_every_split_written_is_valid_and_the_policys_own(report: dict[str, Any]) -> None:
    for policy, entry in report["replay-errors"].items():
        (run,) = entry["lab_runs"]
        steps = run["steps"]
        assert len(steps) == DURATION_S // 5
        for step in steps:
            weights = step["weights"]
            assert set(weights) == {"v1", "v2"}
            assert all(isinstance(w, int) and 0 <= w <= 100 for w in weights.values())
            assert sum(weights.values()) == 100
            assert weights == SPLITS[policy], (policy, step)
        start = SPLITS["proportional"]  # the scenario's start: proportional to capacity
        moved = sum(abs(SPLITS[policy][v] - start[v]) for v in start) / 2
        assert entry["churn"] == pytest.approx(moved / len(steps))
