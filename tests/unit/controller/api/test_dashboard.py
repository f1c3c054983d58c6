"""The operator dashboard as the app serves it (TestClient, a loop on the simulated mesh
advanced by hand).

Cases: ``/`` is HTML with a Content-Security-Policy that allows only this origin, and every
script, stylesheet and icon it references is a relative, same-origin URL that answers 200 with
its media type; nothing outside the asset list is served (the page's own file, the router's
source, traversal); the shipped script never builds markup from strings or evaluates code,
and none of the files names an external host; ``pyproject.toml`` ships every asset as package
data. ``/dashboard/api/history`` returns one route's decisions as equal-length columns, oldest
first, with every subset, weights summing to 100 and telemetry as numbers; a pin shows up as
the last weights; unknown routes are a 404 and bad windows a 422; the window drops older
decisions, and NaN or missing telemetry is null.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agents.registry import make_policy
from controller.api.app import create_app
from controller.api.dashboard.router import ASSETS, STATIC_PREFIX, history
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.settings import load_settings
from controller.store import DecisionRecord, DecisionStore
from envs.simulator.realtime import RealtimeSimulatedMesh, route_for
from envs.simulator.scenario import load_scenario
from meshcore import Weights

REPO = Path(__file__).resolve().parents[4]
CANARY = route_for("degraded-canary")
TOKEN = "operator-token-for-the-tests"
STATIC = files("controller.api.dashboard") / "static"


class Served:
    def __init__(self, mesh: RealtimeSimulatedMesh, loop: ControlLoop, guard: Guard) -> None:
        self.mesh, self.loop, self.guard = mesh, loop, guard

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.mesh.advance()
            self.loop.tick()


@pytest.fixture
def served() -> Iterator[tuple[Served, TestClient]]:
    mesh = RealtimeSimulatedMesh.from_scenarios(
        scenarios=[load_scenario("degraded-canary")], seed=3
    )
    guard = Guard(GuardConfig(max_step=10))
    store = DecisionStore(":memory:")
    loop = ControlLoop(
        observer=mesh,
        actuator=mesh,
        policy=make_policy("proportional"),
        guard=guard,
        store=store,
        routes=mesh.routes,
        clock=mesh.clock,
        slo_ms=250.0,
        writer_id="pod-test",
        verify_after_s=30.0,
        verify_tolerance=10.0,
    )
    app = create_app(settings=load_settings(), loop=loop, store=store, guard=guard, api_token=TOKEN)
    with TestClient(app) as client:
        yield Served(mesh, loop, guard), client
    store.close()


class _Refs(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs.extend(v for k, v in attrs if k in ("src", "href") and v is not None)


def test_the_page_references_only_same_origin_assets_that_answer(
    served: tuple[Served, TestClient],
) -> None:
    _, client = served
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "unsafe" not in csp
    parser = _Refs()
    parser.feed(page.text)
    assert len(parser.refs) == len(ASSETS)  # script, stylesheet, icon
    for ref in parser.refs:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:|//|/)", ref, re.I), ref  # relative
        asset = client.get("/" + ref)
        assert asset.status_code == 200, ref
        name = ref.rsplit("/", 1)[-1]
        assert asset.headers["content-type"] == ASSETS[name]
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert {r.rsplit("/", 1)[-1] for r in parser.refs} == set(ASSETS)


@pytest.mark.parametrize(
    "name", ["index.html", "router.py", "..%2Frouter.py", "nope.js", "%2e%2e%2f__init__.py"]
)
def test_only_the_listed_assets_are_served(served: tuple[Served, TestClient], name: str) -> None:
    _, client = served
    assert client.get(f"{STATIC_PREFIX}/{name}").status_code == 404


def test_the_script_never_turns_data_into_markup_or_code_and_nothing_is_external() -> None:
    script = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setTimeout(\"", "javascript:"):  # fmt: skip
        assert sink not in script, sink
    assert "textContent" in script and "Authorization" in script and "sessionStorage" in script
    for name in (*ASSETS, "index.html"):
        text = (STATIC / name).read_text(encoding="utf-8")
        hosts = re.findall(r"(?:https?:)?//[\w.-]+", text)
        assert set(hosts) <= {"http://www.w3.org"}, (name, hosts)  # the SVG namespace only
        assert "@import" not in text and "url(" not in text, name


def test_pyproject_ships_every_asset_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["controller"]
    shipped = {p.name for p in Path(str(STATIC)).iterdir()}
    assert shipped >= {*ASSETS, "index.html"}
    for name in shipped:
        assert any(Path("api/dashboard/static", name).match(p) for p in patterns), name


def test_history_is_equal_length_columns_oldest_first(served: tuple[Served, TestClient]) -> None:
    ctl, client = served
    ctl.tick(6)
    response = client.get("/dashboard/api/history", params={"route": CANARY.key})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "route", "now_s", "window_s", "subsets", "ts_s", "phase", "weights", "rps",
        "error_ratio", "p99_ms", "truncated",
    }  # fmt: skip
    assert body["route"] == CANARY.key and body["window_s"] == 3600
    assert body["subsets"] == ["stable", "canary"] and body["truncated"] is False
    n = len(body["ts_s"])
    assert n == 6 and body["ts_s"] == sorted(body["ts_s"]) and body["ts_s"][-1] <= body["now_s"]
    assert len(body["phase"]) == n
    for column in ("weights", "rps", "error_ratio", "p99_ms"):
        assert set(body[column]) == {"stable", "canary"}, column
        assert all(len(v) == n for v in body[column].values()), column
    for i in range(n):
        points = [body["weights"][s][i] for s in body["subsets"]]
        assert all(isinstance(p, int) for p in points) and sum(points) == 100
    last = {s: body["weights"][s][-1] for s in body["subsets"]}
    assert last == client.get(f"/routes/{CANARY.key}").json()["weights"]
    assert all(isinstance(v, float) and v > 0 for v in body["rps"]["stable"][1:])
    assert all(0.0 <= v <= 1.0 for v in body["error_ratio"]["stable"] if v is not None)


def test_a_pin_is_the_last_weights_of_the_history(served: tuple[Served, TestClient]) -> None:
    ctl, client = served
    ctl.tick(2)
    ctl.guard.pin(CANARY, Weights(("stable", "canary"), [100, 0]), ctl.loop.now() + 600)
    ctl.tick()
    body = client.get("/dashboard/api/history", params={"route": CANARY.key}).json()
    assert body["phase"][-1] == "overridden"
    assert (body["weights"]["stable"][-1], body["weights"]["canary"][-1]) == (100, 0)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"route": "lirmm-services/nope/default"}, 404),
        ({}, 422),
        ({"route": CANARY.key, "window_s": 0}, 422),
        ({"route": CANARY.key, "window_s": 10**9}, 422),
        ({"route": CANARY.key, "window_s": "nan"}, 422),
    ],
)
def test_history_refuses_unknown_routes_and_bad_windows(
    served: tuple[Served, TestClient], params: dict[str, object], status: int
) -> None:
    _, client = served
    assert client.get("/dashboard/api/history", params=params).status_code == status


def _record(ts_s: float, p99_ms: float, *, written: dict[str, int] | None = None) -> DecisionRecord:
    subsets = [
        {"name": "a", "rps": 10.0, "error_ratio": 0.0, "p99_ms": p99_ms, "weight": 70},
        {"name": "b", "rps": math.nan, "error_ratio": math.nan, "p99_ms": math.nan, "weight": 30},
    ]
    return DecisionRecord(
        ts_s=ts_s,
        route="ns/vs/r",
        phase="active",
        reason="test",
        outcome="written" if written else "unchanged",
        observation={"subsets": subsets},
        written=written,
        wrote=written is not None,
    )


def test_history_keeps_the_window_and_turns_missing_data_into_null() -> None:
    newest_first = [
        _record(1000.0, 40.0, written={"a": 60, "b": 40}),
        _record(990.0, math.inf),
        _record(100.0, 10.0),  # outside a 60 s window
    ]
    view = history(newest_first, route="ns/vs/r", now_s=1000.0, window_s=60.0, truncated=False)
    assert view.ts_s == [990.0, 1000.0]
    assert view.subsets == ["a", "b"]
    assert view.p99_ms == {"a": [None, 40.0], "b": [None, None]}
    assert view.rps == {"a": [10.0, 10.0], "b": [None, None]}
    assert view.weights == {"a": [70, 60], "b": [30, 40]}  # observed, then written
