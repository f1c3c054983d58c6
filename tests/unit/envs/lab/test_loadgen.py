"""The open-loop load generator: its arrival process (no network) and its runs against a
backend process (no Envoy).

Cases: arrivals are Poisson at the asked rate (count, exponential gaps, Poisson dispersion);
bursts and the diurnal sine modulate the rate as the simulator's `load_rps` says (and a flat
rate is rejected by the same check, so the check has power); the schedule is seeded and
bounded for any load; a plan's streams are independent and sized by their own rates; results
count what the backend counted; 503s, refused connections and timeouts are recorded as such;
the background generator stops on request, runs in a process of its own (a thread spinning
beside it does not delay its requests, as it did when it ran in the caller's interpreter) and
stops when its parent dies; summaries are JSON; the CLI prints and writes one;
only loopback targets are accepted (API and CLI); the open-files limit is raised to the hard
limit, best effort, by every entry point.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from envs.lab import loadgen
from envs.lab.arrivals import arrival_times, load_rps, mean_rps, peak_rps, schedule
from envs.lab.backend_client import backend_state
from envs.lab.backend_config import BackendConfig
from envs.lab.limits import raise_nofile_limit
from envs.lab.load_process import LoadGenerator
from envs.lab.load_result import NO_SUBSET, LoadResult
from envs.lab.loadgen import run_load
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import Burst, Diurnal, Load, parse_scenario
from tests.helpers import free_port
from tests.unit.envs.lab import REPO, backend_config, running_backend

pytestmark = pytest.mark.timeout(60)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def rate_fit_pvalue(times: np.ndarray, load: Load, duration_s: float, bin_s: float = 1.0) -> float:
    """Chi-square p-value of per-bin arrival counts against the integral of `load_rps`."""
    edges = np.arange(0.0, duration_s + 1e-9, bin_s)
    counts, _ = np.histogram(times, edges)
    fine = np.linspace(0.0, duration_s, int(duration_s * 100), endpoint=False) + 0.005
    expected = load_rps(load, fine).reshape(len(counts), -1).mean(axis=1) * bin_s
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(chi2, len(counts)))


# ---- the arrival process (no network) ------------------------------------------------------


def test_homogeneous_arrivals_are_poisson_at_the_asked_rate() -> None:
    rps, duration_s = 200.0, 300.0
    times = arrival_times(Load(rps=rps), duration_s, rng(3))
    n = times.size
    assert abs(n - rps * duration_s) < 4.5 * math.sqrt(rps * duration_s)
    gaps = np.diff(times)
    assert stats.kstest(gaps, "expon", args=(0, 1 / rps)).pvalue > 1e-3
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.03)
    # per-second counts of a Poisson process: variance == mean (a regular or clumped
    # process fails this index-of-dispersion test)
    counts, _ = np.histogram(times, np.arange(0, duration_s + 1))
    dispersion = counts.var(ddof=1) * (counts.size - 1) / counts.mean()
    assert 1e-3 < stats.chi2.sf(dispersion, counts.size - 1) < 1 - 1e-3


def test_evenly_spaced_arrivals_would_fail_the_poisson_checks() -> None:
    gaps = np.full(10_000, 1 / 200.0)
    assert stats.kstest(gaps, "expon", args=(0, 1 / 200.0)).pvalue < 1e-6


def test_bursts_multiply_the_rate_in_their_window() -> None:
    load = Load(rps=100.0, bursts=(Burst(at_s=50.0, duration_s=20.0, factor=4.0),))
    times = arrival_times(load, 100.0, rng(5))
    inside = np.count_nonzero((times >= 50.0) & (times < 70.0)) / 20.0
    outside = np.count_nonzero((times < 50.0) | (times >= 70.0)) / 80.0
    assert inside / outside == pytest.approx(4.0, rel=0.1)
    assert rate_fit_pvalue(times, load, 100.0) > 1e-4
    assert rate_fit_pvalue(times, Load(rps=160.0), 100.0) < 1e-6


def test_diurnal_sine_modulates_the_rate() -> None:
    load = Load(rps=150.0, diurnal=Diurnal(amplitude=0.8, period_s=40.0, phase_s=5.0))
    times = arrival_times(load, 200.0, rng(11))
    assert rate_fit_pvalue(times, load, 200.0) > 1e-4
    assert rate_fit_pvalue(times, Load(rps=150.0), 200.0) < 1e-6


def test_rate_matches_the_simulators_load() -> None:
    data = {
        "name": "x",
        "duration_s": 100,
        "load": {
            "rps": 80,
            "diurnal": {"amplitude": 0.3, "period_s": 30, "phase_s": 2},
            "bursts": [{"at_s": 10, "duration_s": 5, "factor": 2.5}],
        },
        "subsets": [{"name": "a", "replicas": 1, "service_ms": 10}],
    }
    sim = MeshSimulator(parse_scenario(data), seed=0)
    load = sim.scenario.load
    t = np.linspace(0, 100, 2001)
    assert load_rps(load, t) == pytest.approx([sim.load_rps(float(x)) for x in t])
    burst_only = Load(rps=100.0, bursts=(Burst(at_s=10.0, duration_s=5.0, factor=3.0),))
    assert mean_rps(burst_only, 20.0) == pytest.approx(150.0)


_LOADS = st.builds(
    Load,
    rps=st.floats(1.0, 500.0),
    diurnal=st.none()
    | st.builds(
        Diurnal,
        amplitude=st.floats(0.0, 0.95),
        period_s=st.floats(0.5, 100.0),
        phase_s=st.floats(-50.0, 50.0),
    ),
    bursts=st.lists(
        st.builds(
            Burst,
            at_s=st.floats(0.0, 10.0),
            duration_s=st.floats(0.1, 5.0),
            factor=st.floats(0.1, 5.0),
        ),
        max_size=3,
    ).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(load=_LOADS, duration_s=st.floats(0.1, 10.0), seed=st.integers(0, 2**32 - 1))
def test_any_schedule_is_sorted_bounded_and_seeded(
    load: Load, duration_s: float, seed: int
) -> None:
    t = np.linspace(0.0, duration_s, 500)
    rates = load_rps(load, t)
    assert np.all(rates >= 0.0)
    assert np.all(rates <= peak_rps(load) * (1 + 1e-12))
    times, which = schedule([("a", load), ("b", load)], duration_s, seed)
    assert np.all(np.diff(times) >= 0.0)
    assert np.all((times >= 0.0) & (times < duration_s))
    again, which_again = schedule([("a", load), ("b", load)], duration_s, seed)
    assert np.array_equal(times, again) and np.array_equal(which, which_again)


def test_plan_streams_are_independent_and_sized_by_their_rates() -> None:
    times, which = schedule([("a", Load(rps=100.0)), ("b", Load(rps=300.0))], 100.0, seed=1)
    n_a, n_b = np.count_nonzero(which == 0), np.count_nonzero(which == 1)
    assert abs(n_a - 10_000) < 450 and abs(n_b - 30_000) < 800
    assert not np.array_equal(times[which == 0][:100], times[which == 1][:100])
    other, _ = schedule([("a", Load(rps=100.0)), ("b", Load(rps=300.0))], 100.0, seed=2)
    assert not np.array_equal(times[:100], other[:100])


# ---- results (no network) ------------------------------------------------------------------


def test_result_scores_bad_requests_and_breaks_down_by_subset() -> None:
    result = LoadResult(
        target="127.0.0.1:1",
        hosts=("h",),
        duration_s=2.0,
        asked_rps=3.0,
        scheduled=6,
        send_s=np.arange(6) * 0.3,
        latency_ms=np.array([10.0, 300.0, 20.0, 5.0, 10_000.0, 40.0]),
        status=np.array([200, 200, 503, 200, 0, 200], dtype=np.int32),
        subset=np.array(["v1", "v1", "v2", "v2", NO_SUBSET, "v1"]),
        host=np.zeros(6, dtype=np.int32),
        lag_ms=np.zeros(6),
    )
    assert (result.sent, result.completed, result.achieved_rps) == (6, 5, 3.0)
    assert result.status_counts == {0: 1, 200: 4, 503: 1}
    assert result.subset_counts == {NO_SUBSET: 1, "v1": 3, "v2": 2}
    assert result.bad_fraction(250.0) == pytest.approx(3 / 6)
    assert result.bad_fraction(1000.0) == pytest.approx(2 / 6)
    subsets = result.by_subset(250.0)
    assert subsets["v1"]["bad_fraction"] == pytest.approx(1 / 3)
    assert subsets["v2"]["error_fraction"] == pytest.approx(1 / 2)
    assert subsets[NO_SUBSET]["p99_ms"] is None
    summary = result.summary(250.0)
    json.dumps(summary, allow_nan=False)
    assert summary["status_counts"] == {"0": 1, "200": 4, "503": 1}


# ---- against a backend ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendConfig]:
    config = backend_config(
        {
            "lg": {"v1": {"service_ms": 2.0}},
            "err": {"v1": {"service_ms": 1.0, "error_rate": 1.0}},
            "slow": {"v1": {"service_ms": 3000.0, "service_dist": "lognormal", "cv": 0.01}},
        }
    )
    with running_backend(config, tmp_path_factory.mktemp("backend")):
        yield config


def target(config: BackendConfig, service: str) -> str:
    port = next(s.subsets[0].ports[0] for s in config.services if s.service == service)
    return f"127.0.0.1:{port}"


def requests_seen(config: BackendConfig, service: str) -> int:
    return int(backend_state(config.control_url)["services"][service]["v1"]["requests"])


def test_run_counts_match_the_backends(backend: BackendConfig) -> None:
    before = requests_seen(backend, "lg")
    result = run_load(target(backend, "lg"), [("lg", Load(rps=150.0))], 2.0, seed=4)
    assert result.sent > 0
    assert requests_seen(backend, "lg") - before == result.sent == result.completed
    assert result.status_counts == {200: result.sent}
    assert result.subset_counts == {"v1": result.sent}
    assert result.sent <= result.scheduled
    assert np.all(result.latency_ms > 0.0)
    assert np.all(np.diff(result.send_s) >= 0.0)
    assert result.asked_rps == pytest.approx(150.0)
    assert result.bad_fraction(250.0) <= 0.01


def test_errors_and_refused_connections_are_bad(backend: BackendConfig) -> None:
    errors = run_load(target(backend, "err"), [("err", Load(rps=100.0))], 0.5, seed=1)
    assert errors.status_counts == {503: errors.sent}
    assert errors.bad_fraction(250.0) == 1.0
    refused = run_load(f"127.0.0.1:{free_port()}", [("x", Load(rps=100.0))], 0.5, seed=1)
    assert refused.sent > 0 and refused.completed == 0
    assert refused.status_counts == {0: refused.sent}
    assert refused.subset_counts == {NO_SUBSET: refused.sent}
    assert math.isnan(refused.p99_ms())


def test_a_request_slower_than_the_timeout_is_status_0(backend: BackendConfig) -> None:
    result = run_load(target(backend, "slow"), [("slow", Load(rps=20.0))], 0.5, timeout_s=0.3)
    assert result.sent > 0
    assert result.status_counts == {0: result.sent}
    assert np.all(result.latency_ms >= 290.0)


def test_background_generator_stops_on_request(backend: BackendConfig) -> None:
    before = requests_seen(backend, "lg")
    gen = LoadGenerator(target(backend, "lg"), [("lg", Load(rps=100.0))], 3600.0, seed=2)
    gen.start()
    time.sleep(0.8)
    result = gen.stop()
    assert not gen.running
    assert 0.0 < result.duration_s < 60.0
    assert result.sent > 0
    assert requests_seen(backend, "lg") - before == result.sent == result.completed
    with pytest.raises(RuntimeError):
        gen.start()


def test_a_busy_caller_does_not_delay_the_background_generator(backend: BackendConfig) -> None:
    """Two threads spin in this interpreter for the whole run. When the generator ran in the
    caller's interpreter the same neighbours made 99 % of 400 rps late by seconds (p99 lag
    2.6 s); in a process of its own its requests leave on time (the bound has 10x margin)."""
    spinning = True

    def spin() -> None:
        x = 0
        while spinning:
            x += 1

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    gen = LoadGenerator(target(backend, "lg"), [("lg", Load(rps=200.0))], 2.0, seed=3)
    try:
        for t in threads:
            t.start()
        gen.start()
        time.sleep(2.5)
    finally:
        spinning = False
        result = gen.stop()
        for t in threads:
            t.join()
    assert result.sent > 0 and result.completed == result.sent
    assert float(np.quantile(result.lag_ms, 0.99)) < 250.0


def test_the_background_generator_stops_when_its_parent_dies(backend: BackendConfig) -> None:
    script = (
        "import os, sys\n"
        "from envs.lab.load_process import LoadGenerator\n"
        "from envs.simulator.scenario import Load\n"
        "if __name__ == '__main__':\n"
        f"    gen = LoadGenerator({target(backend, 'lg')!r}, [('lg', Load(rps=50.0))], 3600.0)\n"
        "    gen.start()\n"
        "    print(gen._process.pid, flush=True)\n"
        "    os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the load generator outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cli_prints_and_writes_the_summary(backend: BackendConfig, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "envs.lab.loadgen", "--target", target(backend, "lg")]
    argv += ["--host", "lg", "--rps", "50", "--duration", "0.5", "--burst", "0.1:0.2:2"]
    argv += ["--out", str(out), "--slo-ms", "100"]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed: dict[str, Any] = json.loads(run.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["slo_ms"] == 100.0
    assert printed["status_counts"] == {"200": printed["sent"]}
    bad = subprocess.run(
        [
            *argv[:5],
            "--host",
            "h",
            "--rps",
            "1",
            "--duration",
            "1",
            "--burst",
            "1:2",
        ],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2 and b"AT:DURATION:FACTOR" in bad.stderr


# ---- loopback only -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "addr"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:1", ("localhost", 1)),
        ("LOCALHOST:65535", ("LOCALHOST", 65535)),
        ("::1:80", ("::1", 80)),
        ("[::1]:80", ("::1", 80)),
    ],
)
def test_loopback_targets_are_accepted(target: str, addr: tuple[str, int]) -> None:
    assert loadgen.parse_target(target) == addr


NOT_LOOPBACK = ["10.0.0.1:80", "example.com:80", "0.0.0.0:80", "127.0.0.2:80", "[::]:80"]


@pytest.mark.parametrize("target", [*NOT_LOOPBACK, "127.0.0.1", "127.0.0.1:0", ":80", "x"])
def test_other_targets_are_a_value_error(target: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|HOST:PORT"):
        run_load(target, [("h", Load(rps=1.0))], 0.1)
    with pytest.raises(ValueError, match=r"loopback|HOST:PORT"):
        LoadGenerator(target, [("h", Load(rps=1.0))])


@pytest.mark.parametrize("target", NOT_LOOPBACK)
def test_cli_refuses_a_target_that_is_not_loopback(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "--host", "h", "--rps", "1", "--duration", "0.1"]
    with pytest.raises(SystemExit) as exit_info:
        loadgen.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--target" in err and "must be loopback" in err


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        loadgen.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the arrival times" in text
    assert "must be 127.0.0.1, localhost or ::1" in text


# ---- open-files limit ----------------------------------------------------------------------


@pytest.fixture
def low_nofile() -> Iterator[tuple[int, int]]:
    """The soft open-files limit lowered to 256 for the test, restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
    try:
        yield soft, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_raise_nofile_limit_lifts_the_soft_limit(low_nofile: tuple[int, int]) -> None:
    _, hard = low_nofile
    got = raise_nofile_limit()
    now = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert got == now[0] > 256
    assert now[1] == hard
    if hard != resource.RLIM_INFINITY:
        assert got == hard
    assert raise_nofile_limit() == got  # idempotent


def test_raise_nofile_limit_never_fails(
    low_nofile: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise ValueError("not permitted")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def unreadable(*_: object) -> None:
        raise OSError("no limits here")

    monkeypatch.setattr(resource, "getrlimit", unreadable)
    assert raise_nofile_limit() == -1


def test_every_entry_point_raises_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy() -> int:
        calls.append("raised")
        return 0

    monkeypatch.setattr(loadgen, "raise_nofile_limit", spy)
    nowhere = f"127.0.0.1:{free_port()}"
    run_load(nowhere, [("x", Load(rps=10.0))], 0.05, warm_connections=0)
    assert calls == ["raised"]
    loadgen.main(["--target", nowhere, "--host", "x", "--rps", "10", "--duration", "0.05"])
    assert calls == ["raised"] * 3  # main, then run_load
