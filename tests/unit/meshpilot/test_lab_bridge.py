"""`VirtualServiceBridge` over in-memory actuators, and `meshpilot lab bridge`'s one-line errors.

Cases: only routes whose weights differ are written to the sink (subset order does not count
as a difference); a source or sink failure on one route is counted and does not stop the
others, and the route is copied once the failure is gone; an unreadable sink is repaired by a
write; `stop()` ends the thread, which copied changes while it ran; the command says in one
line when the kubeconfig is unreadable or no lab runs.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from meshcore import RouteRef, TemporaryError, Weights
from meshpilot.cli import main
from meshpilot.lab_bridge import VirtualServiceBridge

NS = "lirmm-services"
A = RouteRef(NS, "shop", "default", f"shop.{NS}.svc.cluster.local")
B = RouteRef(NS, "cart", "default", f"cart.{NS}.svc.cluster.local")


class FakeActuator:
    """Weights in a dict; `fail_reads` / `fail_writes` name routes whose calls raise."""

    def __init__(self, weights: dict[RouteRef, Weights]) -> None:
        self.weights = dict(weights)
        self.applied: list[tuple[RouteRef, Weights]] = []
        self.fail_reads: set[RouteRef] = set()
        self.fail_writes: set[RouteRef] = set()
        self._lock = threading.Lock()

    def current(self, route: RouteRef) -> Weights:
        with self._lock:
            if route in self.fail_reads:
                raise TemporaryError(f"{route.key}: read failed")
            return self.weights[route]

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        with self._lock:
            if route in self.fail_writes:
                raise TemporaryError(f"{route.key}: write failed")
            self.applied.append((route, weights))
            self.weights[route] = weights
            return weights


def w(v1: int, v2: int, v3: int) -> Weights:
    return Weights(("v1", "v2", "v3"), (v1, v2, v3))


def test_copies_only_the_routes_whose_weights_differ() -> None:
    source = FakeActuator({A: w(50, 25, 25), B: w(10, 0, 90)})
    sink = FakeActuator({A: w(50, 25, 25), B: w(34, 33, 33)})
    bridge = VirtualServiceBridge(source, sink, [A, B])
    assert bridge.sync_once() == 1
    assert sink.applied == [(B, w(10, 0, 90))]
    assert bridge.sync_once() == 0  # in step now: nothing more is written
    assert len(sink.applied) == 1
    assert (bridge.passes, bridge.copies, bridge.errors) == (2, 1, 0)


def test_the_same_split_in_another_order_is_not_a_difference() -> None:
    source = FakeActuator({A: Weights(("v3", "v1", "v2"), (25, 50, 25))})
    sink = FakeActuator({A: w(50, 25, 25)})
    assert VirtualServiceBridge(source, sink, [A]).sync_once() == 0
    assert sink.applied == []


@pytest.mark.parametrize("side", ["source read", "sink write"])
def test_a_failing_route_is_counted_and_retried_and_the_others_still_copy(side: str) -> None:
    source = FakeActuator({A: w(0, 50, 50), B: w(10, 0, 90)})
    sink = FakeActuator({A: w(50, 25, 25), B: w(34, 33, 33)})
    failing = source.fail_reads if side == "source read" else sink.fail_writes
    failing.add(A)
    bridge = VirtualServiceBridge(source, sink, [A, B])
    assert bridge.sync_once() == 1
    assert bridge.sync_once() == 0
    assert bridge.errors == 2
    assert A.key in bridge.last_error and "failed" in bridge.last_error
    assert sink.weights[A] == w(50, 25, 25) and sink.weights[B] == w(10, 0, 90)
    failing.clear()
    assert bridge.sync_once() == 1
    assert sink.weights[A] == w(0, 50, 50)
    assert bridge.errors == 2


def test_an_unreadable_sink_is_repaired_by_a_write() -> None:
    source = FakeActuator({A: w(0, 50, 50)})
    sink = FakeActuator({A: w(0, 50, 50)})
    sink.fail_reads.add(A)
    bridge = VirtualServiceBridge(source, sink, [A])
    assert bridge.sync_once() == 1
    assert sink.applied == [(A, w(0, 50, 50))] and bridge.errors == 0


def test_the_thread_copies_changes_until_stop_ends_it() -> None:
    source = FakeActuator({A: w(50, 25, 25)})
    sink = FakeActuator({A: w(50, 25, 25)})
    sink.fail_writes.add(B)
    bridge = VirtualServiceBridge(source, sink, [A], interval_s=0.01)
    bridge.start()
    try:
        source.weights[A] = w(20, 0, 80)
        deadline = time.monotonic() + 10
        while sink.weights[A] != w(20, 0, 80):
            assert time.monotonic() < deadline, "the bridge never copied the change"
            time.sleep(0.01)
        assert bridge.running
    finally:
        bridge.stop()
    assert not bridge.running
    passes = bridge.passes
    source.weights[A] = w(90, 5, 5)
    time.sleep(0.1)
    assert bridge.passes == passes and sink.weights[A] == w(20, 0, 80)


def test_interval_must_be_positive() -> None:
    from meshcore import ConfigError

    with pytest.raises(ConfigError, match="interval_s"):
        VirtualServiceBridge(FakeActuator({}), FakeActuator({}), [A], interval_s=0)


def _kubeconfig(path: Path) -> Path:
    """A well-formed kubeconfig naming a server nobody runs (the command fails before use)."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(cfg))
    return path


def test_the_command_says_in_one_line_that_no_lab_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig")
    state_dir = tmp_path / "no-lab"
    code = main(["lab", "bridge", "--kubeconfig", str(kubeconfig), "--state-dir", str(state_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "no lab is running" in err, err


def test_the_command_says_in_one_line_that_the_kubeconfig_is_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing-kubeconfig"
    code = main(["lab", "bridge", "--kubeconfig", str(missing), "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(missing) in err, err
