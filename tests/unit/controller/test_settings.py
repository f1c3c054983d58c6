"""Settings of `meshpilot serve`: where each value comes from and how bad input is reported.

Cases: documented defaults (identity from $HOSTNAME); environment variables with the
MESHPILOT_ prefix and __ nesting, including a JSON list of routes; a YAML file by argument and
by $MESHPILOT_CONFIG; priority options > environment > file > defaults, merged per nested key;
route defaults and index routes; guard settings become the same GuardConfig; malformed input —
bad YAML, a non-mapping, a missing file, an unknown key, a wrong value, infeasible floors, a
bad environment variable, k8s without routes — is one ConfigError naming file or variable and
field; every field carries a docstring with its default.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from controller import settings as settings_module
from controller.guard import GuardConfig
from controller.settings import CONFIG_ENV, load_settings
from meshcore import ConfigError, RouteRef


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MESHPILOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOSTNAME", "meshpilot-7d9f-abcde")


def write(tmp_path: Path, text: str, name: str = "meshpilot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings()
    assert s.mesh == "sim" and s.mode == "active"
    assert s.tick_s == 5.0 and s.slo_ms == 250.0
    assert s.api.host == "127.0.0.1" and s.api.port == 8080
    assert s.policy is None
    assert s.sim.scenarios == ["degraded-canary", "latency-spike", "steady-80"]
    assert s.sim.speed == 1.0
    assert s.verify.delay_s is None and s.verify.tolerance_points == 10.0
    assert s.prometheus.window_s == 30.0 and s.prometheus.timeout_s == 2.0
    assert s.leader.enabled is False and s.leader.identity == "meshpilot-7d9f-abcde"
    assert s.kube.kubeconfig is None and s.kube.dry_run is False
    assert s.guard.to_config() == GuardConfig()


def test_environment_variables_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPILOT_TICK_S", "2.5")
    monkeypatch.setenv("MESHPILOT_GUARD__MAX_STEP", "4")
    monkeypatch.setenv("MESHPILOT_API__PORT", "9001")
    monkeypatch.setenv(
        "MESHPILOT_ROUTES",
        '[{"virtual_service": "checkout", "route": "primary", "subsets": ["v1", "v2"]}]',
    )
    s = load_settings()
    assert s.tick_s == 2.5 and s.guard.max_step == 4 and s.api.port == 9001
    assert [r.ref() for r in s.routes] == [
        RouteRef(
            "lirmm-services", "checkout", "primary", "checkout.lirmm-services.svc.cluster.local"
        )
    ]


def test_yaml_file_env_and_options_merge_by_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
mesh: k8s
tick_s: 10
routes:
  - {namespace: shop, virtual_service: reviews, route: 1, host: reviews, subsets: [v1, v2],
     capacity_rps: {v1: 300, v2: 100}, balancer: random}
guard: {max_step: 20, floors: {v1: 10}}
prometheus: {url: "http://prom:9090", window_s: 60}
""",
    )
    monkeypatch.setenv("MESHPILOT_GUARD__MAX_STEP", "5")  # env beats the file
    s = load_settings(path, tick_s=1.0, api={"port": 9100})  # options beat both
    assert s.mesh == "k8s" and s.tick_s == 1.0 and s.api.port == 9100
    assert s.guard.max_step == 5 and dict(s.guard.floors) == {"v1": 10}  # merged per key
    assert s.prometheus.url == "http://prom:9090" and s.prometheus.window_s == 60.0
    (route,) = s.routes
    assert route.ref() == RouteRef("shop", "reviews", 1, "reviews")
    assert route.capacity_rps == {"v1": 300.0, "v2": 100.0} and route.balancer == "random"
    assert s.guard.to_config() == GuardConfig(max_step=5, floors={"v1": 10})


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "sim: {speed: 20, scenarios: [steady-50]}\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    s = load_settings()
    assert s.sim.speed == 20.0 and s.sim.scenarios == ["steady-50"]


def test_a_numeric_route_name_is_an_index() -> None:
    s = load_settings(routes=[{"virtual_service": "cart", "route": "3"}])
    assert s.routes[0].ref().route == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("guard: {max_step: 0}\n", "field 'guard.max_step': Input should be greater than or equal"),
        ("guard: {max_stpe: 5}\n", "field 'guard.max_stpe': unknown key"),
        ("tick_s: fast\n", "field 'tick_s': Input should be a valid number"),
        ("guard: {floors: {v1: 60, v2: 60}}\n", "sum to 120 points"),
        ("mesh: nomad\n", "field 'mesh': Input should be 'sim', 'k8s' or 'lab'"),
        ("routes: [{virtual_service: a/b}]\n", "field 'routes.0.virtual_service'"),
        (
            "routes: [{virtual_service: x, subsets: [v1], capacity_rps: {v2: 5}}]\n",
            "capacity_rps names 'v2'",
        ),
        ("api: {port: 70000}\n", "field 'api.port'"),
        (
            "routes: [{virtual_service: x, balancer: ROUND_ROBIN}]\n",
            "field 'routes.0.balancer': Input should be 'least_request' or 'random'",
        ),
    ],
)
def test_malformed_file_names_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(str(path))
    assert expected in str(err.value)


def test_not_yaml_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "guard: {max_step: 5\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_settings(bad)
    listing = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match=r"list\.yaml: settings must be a mapping, got list"):
        load_settings(listing)
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read settings file"):
        load_settings(tmp_path / "nope.yaml")


def test_bad_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPILOT_API__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"environment MESHPILOT_API__PORT: field 'api\.port'"):
        load_settings()


def test_k8s_mesh_needs_routes() -> None:
    with pytest.raises(ConfigError, match="mesh 'k8s' needs at least one entry in routes"):
        load_settings(mesh="k8s")


def test_every_field_is_documented_with_its_default() -> None:
    """Each field of each settings class is followed by a docstring that states a default."""
    tree = ast.parse(inspect.getsource(settings_module))
    undocumented = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or not node.name.endswith("Settings"):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            name = stmt.target.id
            if name == "model_config":
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = (
                nxt.value.value
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                else ""
            )
            if "default" not in str(doc).lower():
                undocumented.append(f"{node.name}.{name}")
    assert undocumented == []
