"""The HTTP API over a real loop driving the simulated mesh (advanced by hand, no threads).

Cases: GET /routes and /routes/{ns}/{vs}/{route} show phase, weights, controls, verification
and the last decision; 404 for an unmanaged route; /decisions filters by route, bounds the
limit, rejects a malformed route key, serves one decision by id and 404s an unknown one; a
swapped-in store (dependency override) is what the handlers read, and a busy store is a 503;
override validation — sum, non-integers, range, unknown subsets, TTL bounds, extra keys — is a
422 naming the field and the problem; a valid override is applied at the next tick, subsets
not named get 0 when it says others_zero, and DELETE drops it; subsets not known yet is a
409; pause, resume and shadow take effect at the next tick; a follower refuses every control
with a 409 naming the leader but still serves reads; /healthz, /readyz (503 before the first
tick, then 200 with leader status and whether the last tick observed); /metrics is Prometheus
text with our series; the OpenAPI docs are served.
Authentication: every control without the operator's bearer token (none, a wrong one, another
scheme) is a 401 that changes nothing, checked before the follower's 409; reads need no token;
the OpenAPI schema declares the bearer scheme; the token file is created once (owner-only) and
read again, and a short token is refused. Hostile input: NaN, Infinity and 1e999 in a body, a
``true`` TTL and a decision id past 64 bits are 422s; no 422 echoes its input; a body over the
cap is a 413 whether its length is declared or streamed. More in ``test_overrides.py`` (pins),
``test_hostile.py``, ``test_docs.py``, ``test_openapi_contract.py`` and
``test_schemathesis.py``; the shared controller is in ``support.py``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controller.api.app import create_app
from controller.api.auth import MIN_TOKEN_CHARS, ensure_token_file, read_token
from controller.api.deps import get_loop, get_store
from controller.api.limits import MAX_BODY_BYTES
from controller.guard import Guard, GuardConfig
from controller.settings import load_settings
from controller.store import DecisionRecord, DecisionStore
from envs.simulator.realtime import RealtimeSimulatedMesh
from envs.simulator.scenario import load_scenario
from meshcore import ConfigError, TemporaryError, largest_remainder
from tests.unit.controller.api.support import (
    CANARY,
    CANARY_PATH,
    OPERATOR,
    STEADY,
    STEADY_PATH,
    TOKEN,
    Controller,
    build_loop,
)


def errors_of(response: object) -> list[tuple[list[object], str]]:
    body = response.json()  # type: ignore[attr-defined]
    return [(e["loc"], e["msg"]) for e in body["detail"]]


def test_lists_managed_routes_with_phase_weights_and_last_decision(ctl: Controller) -> None:
    capacity = ctl.mesh.capacity_rps(CANARY)
    expected = dict(zip(capacity, largest_remainder(list(capacity.values())), strict=True))
    assert expected != {"stable": 90, "canary": 10}  # the scenario starts away from it
    ctl.tick(12)  # 10 points a tick at most: converged by now
    response = ctl.client.get("/routes")
    assert response.status_code == 200
    routes = {r["key"]: r for r in response.json()}
    assert set(routes) == {CANARY.key, STEADY.key}
    canary = routes[CANARY.key]
    assert canary["phase"] == "active"
    assert canary["weights"] == expected  # proportional to capacity
    assert canary["controls"] == {
        "paused": False,
        "shadow": False,
        "pin": None,
        "pin_until_s": None,
    }
    assert canary["failed"] is None
    last = canary["last_decision"]
    assert last["route"] == CANARY.key and last["policy"] == "proportional"
    assert last["observation"]["subsets"][0]["name"] == "stable"
    one = ctl.client.get(CANARY_PATH)
    assert one.status_code == 200 and one.json()["weights"] == canary["weights"]


def test_unknown_route_is_404(ctl: Controller) -> None:
    response = ctl.client.get("/routes/lirmm-services/nope/default")
    assert response.status_code == 404
    assert "route lirmm-services/nope/default is not managed" in response.json()["detail"]
    assert ctl.client.post("/routes/x/y/z/pause").status_code == 404


def test_decisions_by_route_limit_and_id(ctl: Controller) -> None:
    ctl.tick(4)
    everything = ctl.client.get("/decisions", params={"limit": 1000}).json()
    assert len(everything) == 8
    canary = ctl.client.get("/decisions", params={"route": CANARY.key, "limit": 2}).json()
    assert len(canary) == 2 and {d["route"] for d in canary} == {CANARY.key}
    assert canary[0]["id"] > canary[1]["id"]  # newest first
    one = ctl.client.get(f"/decisions/{canary[0]['id']}")
    assert one.status_code == 200 and one.json() == canary[0]
    assert ctl.client.get("/decisions/99999").status_code == 404
    assert ctl.client.get("/decisions", params={"limit": 0}).status_code == 422
    assert ctl.client.get("/decisions", params={"limit": 1001}).status_code == 422
    bad = ctl.client.get("/decisions", params={"route": "just-a-name"})
    assert bad.status_code == 422
    assert errors_of(bad)[0][0] == ["query", "route"]
    assert "namespace/virtualservice/route" in errors_of(bad)[0][1]


def test_handlers_read_the_store_they_are_given(ctl: Controller) -> None:
    ctl.tick(2)
    empty = DecisionStore(":memory:")
    ctl.app.dependency_overrides[get_store] = lambda: empty
    assert ctl.client.get("/decisions").json() == []

    class Busy(DecisionStore):
        def latest(
            self, route: object = None, limit: int = 50, *, operators: bool | None = None
        ) -> list[DecisionRecord]:
            raise TemporaryError("decision store: database is locked")

    ctl.app.dependency_overrides[get_store] = lambda: Busy(":memory:")
    busy = ctl.client.get("/decisions")
    assert busy.status_code == 503 and "database is locked" in busy.json()["detail"]


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"weights": {"v1": 50, "v2": 30, "v3": 10}, "ttl_s": 60}, "weights", "sum to 100, got 90"),
        ({"weights": {"v1": 50.5, "v2": 49.5}, "ttl_s": 60}, "v1", "valid integer"),
        ({"weights": {"v1": "50", "v2": 50}, "ttl_s": 60}, "v1", "valid integer"),
        ({"weights": {"v1": 150, "v2": -50}, "ttl_s": 60}, "v1", "less than or equal to 100"),
        ({"weights": {}, "ttl_s": 60}, "weights", "at least 1 item"),
        ({"weights": {"v1": 100}, "ttl_s": 0}, "ttl_s", "greater than 0"),
        ({"weights": {"v1": 100}}, "ttl_s", "Field required"),
        ({"weights": {"v1": 100}, "ttl_s": 60, "why": "x"}, "why", "Extra inputs"),
        ({"weights": {"v1": 100}, "ttl_s": 7200}, "ttl_s", "at most 3600 s"),
        ({"weights": {"v1": 60, "v9": 40}, "ttl_s": 60}, "weights", "unknown subsets ['v9']"),
    ],
)
def test_override_validation_is_a_clear_422(
    ctl: Controller, body: dict[str, object], loc: str, message: str
) -> None:
    ctl.tick()
    response = ctl.client.post(f"{STEADY_PATH}/override", json=body)
    assert response.status_code == 422
    problems = errors_of(response)
    assert any(loc in [str(p) for p in where] and message in msg for where, msg in problems), (
        problems
    )
    assert ctl.guard.controls(STEADY).pin is None


def test_override_is_applied_next_tick_and_can_be_dropped(ctl: Controller) -> None:
    ctl.tick()
    now = ctl.loop.now()
    response = ctl.client.post(
        f"{STEADY_PATH}/override",
        json={"weights": {"v1": 20, "v3": 80}, "ttl_s": 600, "others_zero": True},
    )
    assert response.status_code == 200
    controls = response.json()["controls"]
    assert controls["pin"] == {"v1": 20, "v2": 0, "v3": 80}  # others_zero: v2 gets 0
    assert controls["pin_until_s"] == pytest.approx(now + 600)
    ctl.tick()
    route = ctl.client.get(STEADY_PATH).json()
    assert route["phase"] == "overridden"
    assert route["weights"] == {"v1": 20, "v2": 0, "v3": 80}
    assert route["last_decision"]["outcome"] == "written"
    dropped = ctl.client.delete(f"{STEADY_PATH}/override")
    assert dropped.status_code == 200 and dropped.json()["controls"]["pin"] is None
    ctl.tick()
    assert ctl.client.get(STEADY_PATH).json()["phase"] == "active"


def test_override_before_the_first_tick_is_a_409(ctl: Controller) -> None:
    response = ctl.client.post(
        f"{STEADY_PATH}/override", json={"weights": {"v1": 100}, "ttl_s": 60}
    )
    assert response.status_code == 409
    assert "not known yet" in response.json()["detail"]


def test_pause_resume_and_shadow_take_effect_next_tick(ctl: Controller) -> None:
    ctl.tick()
    paused = ctl.client.post(f"{CANARY_PATH}/pause")
    assert paused.status_code == 200 and paused.json()["controls"]["paused"] is True
    before = ctl.mesh.current(CANARY)
    ctl.tick(2)
    route = ctl.client.get(CANARY_PATH).json()
    assert route["phase"] == "paused" and ctl.mesh.current(CANARY) == before
    assert ctl.client.post(f"{CANARY_PATH}/resume").json()["controls"]["paused"] is False
    ctl.tick()
    assert ctl.client.get(CANARY_PATH).json()["phase"] == "active"
    assert ctl.mesh.current(CANARY) != before
    on = ctl.client.post(f"{CANARY_PATH}/shadow", json={"enabled": True})
    assert on.status_code == 200 and on.json()["controls"]["shadow"] is True
    ctl.tick()
    assert ctl.client.get(CANARY_PATH).json()["phase"] == "shadow"
    bad = ctl.client.post(f"{CANARY_PATH}/shadow", json={"enabled": "yes"})
    assert bad.status_code == 422 and errors_of(bad)[0][0] == ["body", "enabled"]


def test_health_and_readiness(ctl: Controller) -> None:
    health = ctl.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    not_ready = ctl.client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
    ctl.tick()
    ready = ctl.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "leader": True,
        "mode": "active",
        "ticks": 1,
        "failed_routes": [],
        "observing": True,
    }
    fresh = build_loop(ctl.mesh, Guard(), ctl.store)  # swap in a loop that never ticked
    ctl.client.app.dependency_overrides[get_loop] = lambda: fresh  # type: ignore[attr-defined]
    assert ctl.client.get("/readyz").status_code == 503


def test_metrics_are_prometheus_text_with_our_series(ctl: Controller) -> None:
    ctl.tick(2)
    weights = ctl.loop.route_status(CANARY).weights
    assert weights is not None and weights["canary"] != 10  # moved off the start
    canary = float(weights["canary"])
    response = ctl.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "meshpilot_ticks_total 2.0",
        "meshpilot_tick_duration_seconds_bucket",
        "meshpilot_query_errors_total",
        "meshpilot_conflicts_total",
        f'meshpilot_writes_total{{route="{CANARY.key}"}}',
        f'meshpilot_route_phase{{phase="active",route="{CANARY.key}"}} 1.0',
        f'meshpilot_route_weight{{route="{CANARY.key}",subset="canary"}} {canary:.1f}',
        'meshpilot_decisions_total{outcome="written"',
        "meshpilot_leader 1.0",
    ):
        assert name in text, name


def test_openapi_docs_are_served(ctl: Controller) -> None:
    schema = ctl.client.get("/openapi.json").json()
    assert "/routes/{ns}/{vs}/{route}/override" in schema["paths"]
    assert ctl.client.get("/docs").status_code == 200


class FollowerOf:
    """A `Leadership` that never leads, and knows who does."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

    def is_leader(self) -> bool:
        return False


def test_a_follower_refuses_controls_naming_the_leader_and_still_serves_reads() -> None:
    mesh = RealtimeSimulatedMesh.from_scenarios(scenarios=[load_scenario("steady-80")], seed=3)
    guard = Guard(GuardConfig(max_step=10))
    store = DecisionStore(":memory:")
    loop = build_loop(mesh, guard, store, writer_id="pod-b", leader=FollowerOf("pod-a"))
    app = create_app(settings=load_settings(), loop=loop, store=store, guard=guard, api_token=TOKEN)
    with TestClient(app, headers=OPERATOR) as client:
        mesh.advance()
        loop.tick()
        body = {
            "weights": {
                s: 100 if i == 0 else 0 for i, s in enumerate(mesh.current(STEADY).subsets)
            },
            "ttl_s": 60,
        }
        for method, path, payload in [
            ("post", f"{STEADY_PATH}/override", body),
            ("delete", f"{STEADY_PATH}/override", None),
            ("post", f"{STEADY_PATH}/pause", None),
            ("post", f"{STEADY_PATH}/resume", None),
            ("post", f"{STEADY_PATH}/shadow", {"enabled": True}),
        ]:
            response = client.request(method.upper(), path, json=payload)
            assert response.status_code == 409, (path, response.text)
            detail = response.json()["detail"]
            assert "pod-b" in detail and "follower" in detail and "the leader is pod-a" in detail
        assert guard.controls(STEADY).pin is None and not guard.controls(STEADY).paused
        route = client.get(STEADY_PATH)
        assert route.status_code == 200 and route.json()["last_decision"]["outcome"] == "follower"
    store.close()


CONTROLS = [
    ("POST", f"{STEADY_PATH}/override", {"weights": {"v1": 100}, "ttl_s": 60}),
    ("DELETE", f"{STEADY_PATH}/override", None),
    ("POST", f"{STEADY_PATH}/pause", None),
    ("POST", f"{STEADY_PATH}/resume", None),
    ("POST", f"{STEADY_PATH}/shadow", {"enabled": True}),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-the-operator-token"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["no-token", "wrong-token", "other-scheme"],
)
def test_every_control_without_the_token_is_a_401_that_changes_nothing(
    ctl: Controller, headers: dict[str, str]
) -> None:
    anonymous = TestClient(ctl.client.app, headers=headers)
    for method, path, payload in CONTROLS:
        response = anonymous.request(method, path, json=payload)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "api.token_file" in response.json()["detail"]
    controls = ctl.guard.controls(STEADY)
    assert controls.pin is None and not controls.paused and not controls.shadow
    assert anonymous.get(STEADY_PATH).status_code == 200
    assert anonymous.get("/decisions").status_code == 200
    assert anonymous.get("/healthz").status_code == 200


def test_authentication_comes_before_the_followers_409() -> None:
    mesh = RealtimeSimulatedMesh.from_scenarios(scenarios=[load_scenario("steady-80")], seed=3)
    guard = Guard(GuardConfig(max_step=10))
    store = DecisionStore(":memory:")
    loop = build_loop(mesh, guard, store, writer_id="pod-b", leader=FollowerOf("pod-a"))
    app = create_app(settings=load_settings(), loop=loop, store=store, guard=guard, api_token=TOKEN)
    with TestClient(app) as anonymous:
        assert anonymous.post(f"{STEADY_PATH}/pause").status_code == 401
    store.close()


def test_the_openapi_schema_declares_the_bearer_token_on_controls(ctl: Controller) -> None:
    schema = ctl.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    pause = schema["paths"]["/routes/{ns}/{vs}/{route}/pause"]["post"]
    assert pause["security"] == [{"HTTPBearer": []}]
    assert {"401", "404", "409", "413", "422"} <= set(pause["responses"])
    assert "security" not in schema["paths"]["/routes"]["get"]


def test_the_token_file_is_created_owner_only_then_read_again(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token, created = ensure_token_file(path)
    assert created and len(token) >= MIN_TOKEN_CHARS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token_file(path) == (token, False)
    assert read_token(path) == token


@pytest.mark.parametrize("content", ["short", "two words here, long enough", ""])
def test_an_unusable_token_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ensure_token_file(path)


def test_the_app_refuses_a_short_token(ctl: Controller) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        create_app(
            settings=ctl.settings, loop=ctl.loop, store=ctl.store, guard=ctl.guard, api_token="x"
        )


@pytest.mark.parametrize(
    "raw",
    [
        '{"weights": {"v1": NaN}, "ttl_s": 60}',
        '{"weights": {"v1": 100}, "ttl_s": Infinity}',
        '{"weights": {"v1": 100}, "ttl_s": 1e999}',
        '{"weights": {"v1": 100}, "ttl_s": true}',
        '{"weights": {"v1": 1e999}, "ttl_s": 60}',
    ],
)
def test_non_finite_numbers_and_booleans_in_a_body_are_a_422(ctl: Controller, raw: str) -> None:
    ctl.tick()
    response = ctl.client.post(
        f"{STEADY_PATH}/override", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert all("input" not in e for e in response.json()["detail"])


def test_a_422_never_echoes_its_input(ctl: Controller) -> None:
    ctl.tick()
    huge_name = "x" * 12_000
    response = ctl.client.post(
        f"{STEADY_PATH}/override", json={"weights": {huge_name: 100}, "ttl_s": 60}
    )
    assert response.status_code == 422
    assert len(response.content) < 1_000 and huge_name not in response.text


def test_a_decision_id_past_64_bits_is_a_422(ctl: Controller) -> None:
    assert ctl.client.get(f"/decisions/{2**63}").status_code == 422
    assert ctl.client.get(f"/decisions/{2**63 - 1}").status_code == 404


def test_a_body_over_the_cap_is_a_413_declared_or_streamed(ctl: Controller) -> None:
    big = b'{"weights": {"v1": 100}, "ttl_s": 60, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    declared = ctl.client.post(
        f"{STEADY_PATH}/override", content=big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    streamed = ctl.client.post(
        f"{STEADY_PATH}/override", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert ctl.client.get("/healthz").status_code == 200
