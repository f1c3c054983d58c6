"""The OpenAPI schema names every status each operation can answer, with its body model.

Cases: walking the whole schema, every operation documents the 413 of the body cap and every
4xx/5xx it declares has a JSON body model (`ErrorBody`, `ValidationErrorBody` for 422s, the
health views for their 503s); each operation of the API declares exactly the statuses it can
answer (table below); controls declare the bearer scheme and the 401's ``WWW-Authenticate``;
the override TTL's bounds and the managed route as path example are in the schema. Then every
error status of the override operation is provoked for real — 400, 401, 403, 404, 409
(follower, subsets unknown), 413, 422, 503 — and each answer's body is its documented model.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from controller.access import Caller
from controller.api.deps import get_loop, get_store
from controller.api.limits import MAX_BODY_BYTES
from controller.api.schemas import ErrorBody, ValidationErrorBody
from controller.store import DecisionStore
from meshcore import TemporaryError
from tests.unit.controller.api.support import (
    MAX_TTL_S,
    STEADY,
    STEADY_PATH,
    Controller,
)

ROUTE = "/routes/{ns}/{vs}/{route}"
CONTROL = {"200", "400", "401", "403", "404", "409", "413", "422", "503"}
EXPECTED = {
    ("get", "/routes"): {"200", "413", "503"},
    ("get", ROUTE): {"200", "404", "413", "422", "503"},
    ("post", f"{ROUTE}/override"): CONTROL,
    ("delete", f"{ROUTE}/override"): CONTROL,
    ("post", f"{ROUTE}/pause"): CONTROL,
    ("post", f"{ROUTE}/resume"): CONTROL,
    ("post", f"{ROUTE}/shadow"): CONTROL,
    ("get", "/decisions"): {"200", "413", "422", "503"},
    ("get", "/decisions/{decision_id}"): {"200", "404", "413", "422", "503"},
    ("get", "/healthz"): {"200", "413", "503"},
    ("get", "/readyz"): {"200", "413", "503"},
    ("get", "/metrics"): {"200", "413"},
}
"""What each operation can answer: 400 only with a body to parse (every control takes one:
at least its reason), 401/403/409 only on controls,
404 where a path names something, 422 where there are parameters, 503 where the store is read
(and where health says so); 413 everywhere, the body cap comes before routing."""


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def body_ref(response: dict[str, Any]) -> str:
    return str(response["content"]["application/json"]["schema"]["$ref"])


def test_every_error_of_every_operation_has_a_body_model(ctl: Controller) -> None:
    schema = ctl.client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    for method, path, op in operations(schema):
        responses = op["responses"]
        assert "413" in responses, (method, path)
        for code, response in responses.items():
            if code[0] not in "45":
                continue
            ref = body_ref(response)
            assert ref.rsplit("/", 1)[1] in models, (method, path, code, ref)
            if code == "422":
                assert ref.endswith("/ValidationErrorBody"), (method, path)
            elif path in ("/healthz", "/readyz") and code == "503":
                assert ref.endswith(("/HealthView", "/ReadyView")), (method, path)
            else:
                assert ref.endswith("/ErrorBody"), (method, path, code)
    assert "HTTPValidationError" not in models  # FastAPI's default 422 body is not ours


def test_each_operation_declares_exactly_what_it_can_answer(ctl: Controller) -> None:
    schema = ctl.client.get("/openapi.json").json()
    for (method, path), codes in EXPECTED.items():
        assert set(schema["paths"][path][method]["responses"]) == codes, (method, path)


def test_controls_declare_the_token_and_the_schema_the_deployments_bounds(
    ctl: Controller,
) -> None:
    schema = ctl.client.get("/openapi.json").json()
    for (method, path), codes in EXPECTED.items():
        op = schema["paths"][path][method]
        if "401" in codes:
            assert op["security"] == [{"HTTPBearer": []}], path
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"], path
            examples = {p["name"]: p["example"] for p in op["parameters"] if p["in"] == "path"}
            first = {"ns": STEADY.namespace, "vs": "degraded-canary", "route": "default"}
            assert examples == first, path
        else:
            assert "security" not in op, path
    ttl = schema["components"]["schemas"]["OverrideRequest"]["properties"]["ttl_s"]
    assert (ttl["minimum"], ttl["maximum"]) == (ctl.loop.tick_s, MAX_TTL_S)
    assert "exclusiveMinimum" not in ttl
    assert schema["components"]["schemas"]["OverrideRequest"]["properties"]["others_zero"] == {
        "type": "boolean",
        "title": "Others Zero",
        "description": "true: subsets not named in weights get 0 points; false (default): "
        "weights must name every subset of the route",
        "default": False,
    }


class FollowerOf:
    def __init__(self, holder: str) -> None:
        self.holder = holder

    def is_leader(self) -> bool:
        return False


class Denier:
    """Knows every bearer, allows nobody: a 403."""

    mode = "kubernetes"

    def authenticate(self, token: str) -> Caller | None:
        return Caller("someone")

    def authorize(self, caller: Caller, namespace: str) -> str | None:
        return f"{caller.name} may not act in {namespace}"


class BusyStore(DecisionStore):
    def get(self, decision_id: int) -> Any:
        raise TemporaryError("decision store: database is locked")


def test_every_documented_error_of_an_override_happens_with_its_body(ctl: Controller) -> None:
    path = f"{STEADY_PATH}/override"
    good = {"weights": {"v1": 20, "v2": 0, "v3": 80}, "ttl_s": 60}
    documented = ctl.client.get("/openapi.json").json()["paths"][f"{ROUTE}/override"]["post"]
    seen: dict[int, Any] = {}

    def post(client: TestClient, to: str = path, **kwargs: Any) -> None:
        response = client.post(to, **kwargs)
        seen[response.status_code] = response.json()

    post(ctl.client, json=good)  # before the first tick: subsets unknown
    assert 409 in seen
    ctl.tick()
    post(ctl.client, content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    post(TestClient(ctl.app), json=good)
    post(ctl.client, "/routes/x/y/z/override", json=good)
    post(ctl.client, content=b"x" * (MAX_BODY_BYTES + 1))
    post(ctl.client, json={**good, "ttl_s": 1})
    app = ctl.app
    app.dependency_overrides[get_store] = lambda: BusyStore(":memory:")
    try:
        post(ctl.client, json=good)
    finally:
        app.dependency_overrides.pop(get_store)
    app.dependency_overrides[get_loop] = lambda: _follower(ctl)
    try:
        response = ctl.client.post(path, json=good)
        assert response.status_code == 409 and "follower" in response.json()["detail"]
    finally:
        app.dependency_overrides.pop(get_loop)
    app.state.auth, auth = Denier(), app.state.auth
    try:
        post(ctl.client, json=good)
    finally:
        app.state.auth = auth
    assert set(seen) == {400, 401, 403, 404, 409, 413, 422, 503}
    for code, body in seen.items():
        assert str(code) in documented["responses"], code
        model: type[BaseModel] = ValidationErrorBody if code == 422 else ErrorBody
        model.model_validate(body, strict=True)


def _follower(ctl: Controller) -> Any:
    loop = ctl.loop
    follower = object.__new__(type(loop))
    follower.__dict__.update(loop.__dict__)
    follower.leader = FollowerOf("pod-a")
    return follower


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_503s_carry_their_view(ctl: Controller, path: str) -> None:
    response = ctl.client.get(path)  # /readyz: no tick yet
    schema = ctl.client.get("/openapi.json").json()["paths"][path]["get"]["responses"]["503"]
    assert body_ref(schema).rsplit("/", 1)[1] in ("HealthView", "ReadyView")
    if path == "/readyz":
        assert response.status_code == 503 and response.json()["ready"] is False
