"""The audit of people through the API: who did what, when and why, in ``GET /decisions``.

Cases: every control (pin, release, pause, resume, shadow) takes an optional ``reason`` and
leaves one record naming the caller (``token`` for the static token), the reason, the action
and the controls before and after — a pin released before any tick included;
``operators=true`` lists only those, ``false`` only the controller's decisions; a reason
longer than the cap, or not a string, is a 422 that changes nothing; a caller the
authenticator refuses (403) changes nothing and leaves no record; the OpenAPI schema shows the
reason of every control body and the caller, action and detail of a decision; a pin through
the API is kept in the store's controls (the restart itself: ``tests/e2e/test_serve_sim.py``).
The real Kubernetes reviews are in ``tests/integration/test_api_k8s.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.access import Caller, TtlCache
from controller.api.auth import StaticTokenAuth
from controller.operators import MAX_REASON_CHARS
from tests.unit.controller.api.support import STEADY, STEADY_PATH, Controller

PINNED = {"v1": 20, "v2": 0, "v3": 80}


def actions(ctl: Controller, **params: Any) -> list[dict[str, Any]]:
    query = {"route": STEADY.key, "operators": "true", "limit": 100, **params}
    response = ctl.client.get("/decisions", params=query)
    assert response.status_code == 200, response.text
    return list(reversed(response.json()))


def test_every_control_is_recorded_with_caller_reason_and_what_changed(ctl: Controller) -> None:
    ctl.tick()
    ticks = len(ctl.client.get("/decisions", params={"operators": "false"}).json())
    answers = [
        ctl.client.post(
            f"{STEADY_PATH}/override", json={"weights": PINNED, "ttl_s": 60, "reason": "INC-1"}
        ),
        ctl.client.request("DELETE", f"{STEADY_PATH}/override", json={"reason": "wrong route"}),
        ctl.client.post(f"{STEADY_PATH}/pause", json={"reason": "freeze"}),
        ctl.client.post(f"{STEADY_PATH}/shadow", json={"enabled": True}),
        ctl.client.post(f"{STEADY_PATH}/resume"),  # no body: no reason
    ]
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    rows = actions(ctl)
    assert [r["action"] for r in rows] == ["pin", "release", "pause", "shadow", "resume"]
    assert {r["caller"] for r in rows} == {"token"}
    assert [r["reason"] for r in rows] == ["INC-1", "wrong route", "freeze", "", ""]
    assert all(r["outcome"] == f"operator: {r['action']}" for r in rows)
    assert rows[0]["written"] == PINNED and not rows[0]["wrote"]
    assert rows[1]["detail"]["before"]["pin"] == PINNED  # released before any tick wrote it
    assert rows[1]["detail"]["after"]["pin"] is None
    assert rows[3]["detail"]["enabled"] is True
    assert all(r["ts_s"] == ctl.loop.now() for r in rows)
    decisions = ctl.client.get("/decisions", params={"operators": "false"}).json()
    assert len(decisions) == ticks and all(d["caller"] is None for d in decisions)
    (kept,) = [c for c in ctl.store.saved_controls() if c.route == STEADY.key]
    assert kept.shadow and not kept.paused and kept.pin is None and kept.caller == "token"


@pytest.mark.parametrize("reason", ["x" * (MAX_REASON_CHARS + 1), 42, ["a"]])
def test_a_bad_reason_is_a_422_that_changes_nothing(ctl: Controller, reason: object) -> None:
    ctl.tick()
    for path, body in [
        ("override", {"weights": PINNED, "ttl_s": 60, "reason": reason}),
        ("pause", {"reason": reason}),
    ]:
        response = ctl.client.post(f"{STEADY_PATH}/{path}", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:2] == ["body", "reason"]
    controls = ctl.guard.controls(STEADY)
    assert controls.pin is None and not controls.paused
    assert actions(ctl) == []


class Denier:
    mode = "kubernetes"

    def authenticate(self, token: str) -> Caller | None:
        return Caller("mallory") if token else None

    def authorize(self, caller: Caller, namespace: str) -> str | None:
        return f"{caller.name} may not patch managedroutes.meshpilot.io in {namespace}"


def test_a_caller_without_permission_is_a_403_that_changes_nothing(ctl: Controller) -> None:
    ctl.tick()
    ctl.app.state.auth = Denier()
    for method, path, body in [
        ("POST", "override", {"weights": PINNED, "ttl_s": 60}),
        ("POST", "pause", None),
        ("POST", "shadow", {"enabled": True}),
        ("DELETE", "override", None),
    ]:
        response = ctl.client.request(method, f"{STEADY_PATH}/{path}", json=body)
        assert response.status_code == 403, response.text
        assert "mallory may not patch" in response.json()["detail"]
    controls = ctl.guard.controls(STEADY)
    assert controls.pin is None and not controls.paused and not controls.shadow
    assert actions(ctl) == []


def test_the_schema_documents_reasons_and_who_acted(ctl: Controller) -> None:
    models = ctl.client.get("/openapi.json").json()["components"]["schemas"]
    for body in ("OverrideRequest", "ShadowRequest", "ControlRequest"):
        reason = models[body]["properties"]["reason"]
        assert {"type": "string", "maxLength": MAX_REASON_CHARS} in reason["anyOf"], body
    view = models["DecisionView"]["properties"]
    assert {"caller", "action", "detail"} <= set(view)
    assert "operators" in str(ctl.client.get("/openapi.json").json()["paths"]["/decisions"])


def test_the_static_token_names_no_person_and_allows_everywhere() -> None:
    auth = StaticTokenAuth("a-token-of-enough-length")
    assert auth.authenticate("a-token-of-enough-length") == Caller("token")
    assert auth.authenticate("a-token-of-enough-lengtH") is None
    assert auth.authorize(Caller("token"), "any") is None


def test_review_answers_live_ttl_s_and_the_cache_stays_bounded() -> None:
    now = [0.0]
    cache: TtlCache[str | None] = TtlCache(10.0, max_entries=3, clock=lambda: now[0])
    cache.put("alice", None)  # a denial or an unknown token is cached too
    assert cache.get("alice") == (True, None)
    now[0] = 9.9
    assert cache.get("alice") == (True, None)
    now[0] = 10.0
    assert cache.get("alice") == (False, None)
    for key in "abcd":
        cache.put(key, key)
    assert cache.get("a") == (False, None)  # the oldest went first
    assert [cache.get(k) for k in "bcd"] == [(True, "b"), (True, "c"), (True, "d")]
