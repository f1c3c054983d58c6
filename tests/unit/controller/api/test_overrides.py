"""Pins as operators meet them: strict TTLs, every version named, and when the pin applies.

Cases: a TTL below one control interval (the loop's ``tick_s``, in simulated seconds when a
simulated clock runs faster) is a 422 that states the minimum, whatever the interval; exactly
one interval is accepted; booleans, strings and non-numbers are 422s. A body that leaves out
a version of the route is a 422 naming the missing ones unless it says ``others_zero: true``;
``others_zero`` is a strict boolean. The answer carries ``pin_plan``: the full pinned split,
the expiry, the next tick as UTC ISO 8601 time and seconds from now (the scheduler's next run
when the loop is started), the phase that tick gives the route and whether it writes —
``overridden`` and written, or kept unwritten while paused, in shadow or failed, or nothing
to write when already in place — and the next tick does what the plan said. Without the
token every control is a 401 even when its body is malformed (the token is checked before
FastAPI reads the body); with it, a body that is not UTF-8 is a documented 400.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from controller.recording import RouteStatus
from meshcore import RouteRef
from tests.unit.controller.api.support import (
    CANARY_PATH,
    STEADY,
    STEADY_PATH,
    Controller,
    controller,
)

ALL_THREE = {"v1": 20, "v2": 0, "v3": 80}
"""A valid pin of steady-80, whose subsets are v1, v2 and v3."""


def problems(response: Response) -> list[tuple[list[object], str]]:
    return [(e["loc"], e["msg"]) for e in response.json()["detail"]]


def pin(ctl: Controller, body: dict[str, object], path: str = STEADY_PATH) -> Response:
    return ctl.client.post(f"{path}/override", json=body)


@pytest.mark.parametrize("ttl_s", [0.001, 1, 4.999])
def test_a_ttl_below_one_control_interval_is_a_422_stating_the_minimum(
    ctl: Controller, ttl_s: float
) -> None:
    ctl.tick()
    response = pin(ctl, {"weights": ALL_THREE, "ttl_s": ttl_s})
    assert response.status_code == 422
    [(loc, msg)] = problems(response)
    assert loc == ["body", "ttl_s"]
    assert "at least 5 s, one control interval (tick_s)" in msg
    assert ctl.guard.controls(STEADY).pin is None


def test_the_minimum_follows_the_loops_interval() -> None:
    with controller(tick_s=30.0) as ctl:
        ctl.tick()
        short = pin(ctl, {"weights": ALL_THREE, "ttl_s": 20})
        assert short.status_code == 422
        assert "at least 30 s" in problems(short)[0][1]
        assert pin(ctl, {"weights": ALL_THREE, "ttl_s": 30}).status_code == 200
        ttl = ctl.client.get("/openapi.json").json()["components"]["schemas"]["OverrideRequest"]
        assert ttl["properties"]["ttl_s"]["minimum"] == 30.0


def test_with_a_faster_simulated_clock_the_minimum_is_in_simulated_seconds() -> None:
    with controller(sim_speed=10.0) as ctl:  # ticks every 5 wall s = 50 simulated s
        ctl.tick()
        short = pin(ctl, {"weights": ALL_THREE, "ttl_s": 20})
        assert short.status_code == 422
        assert (
            "at least 50 s, one control interval (tick_s 5 s at sim.speed 10)"
            in (problems(short)[0][1])
        )
        assert pin(ctl, {"weights": ALL_THREE, "ttl_s": 50}).status_code == 200


def test_a_ttl_of_exactly_one_interval_is_accepted(ctl: Controller) -> None:
    ctl.tick()
    assert pin(ctl, {"weights": ALL_THREE, "ttl_s": 5}).status_code == 200


@pytest.mark.parametrize("ttl", [True, False, "60", "1e3", None, [60], {"s": 60}])
def test_a_ttl_that_is_not_a_number_is_a_422(ctl: Controller, ttl: object) -> None:
    ctl.tick()
    response = pin(ctl, {"weights": ALL_THREE, "ttl_s": ttl})
    assert response.status_code == 422
    assert any(loc == ["body", "ttl_s"] for loc, _ in problems(response))


def test_leaving_out_a_version_is_a_422_naming_it(ctl: Controller) -> None:
    ctl.tick()
    response = pin(ctl, {"weights": {"v1": 20, "v3": 80}, "ttl_s": 60})
    assert response.status_code == 422
    [(loc, msg)] = problems(response)
    assert loc == ["body", "weights"]
    assert "missing ['v2']" in msg and "others_zero: true" in msg
    assert ctl.guard.controls(STEADY).pin is None
    only_one = pin(ctl, {"weights": {"v3": 100}, "ttl_s": 60})
    assert "missing ['v1', 'v2']" in problems(only_one)[0][1]


def test_others_zero_says_the_unnamed_versions_get_nothing(ctl: Controller) -> None:
    ctl.tick()
    response = pin(ctl, {"weights": {"v3": 100}, "ttl_s": 60, "others_zero": True})
    assert response.status_code == 200
    assert response.json()["pin_plan"]["weights"] == {"v1": 0, "v2": 0, "v3": 100}
    named_all = pin(ctl, {"weights": ALL_THREE, "ttl_s": 60, "others_zero": False})
    assert named_all.status_code == 200


@pytest.mark.parametrize("flag", ["true", 1, "yes", None])
def test_others_zero_is_a_strict_boolean(ctl: Controller, flag: object) -> None:
    ctl.tick()
    response = pin(ctl, {"weights": {"v3": 100}, "ttl_s": 60, "others_zero": flag})
    assert response.status_code == 422
    assert any(loc == ["body", "others_zero"] for loc, _ in problems(response))


def test_every_problem_of_a_pin_is_told_at_once(ctl: Controller) -> None:
    ctl.tick()
    response = pin(ctl, {"weights": {"v1": 100}, "ttl_s": 1})
    assert [loc for loc, _ in problems(response)] == [["body", "ttl_s"], ["body", "weights"]]


def test_the_answer_says_when_and_how_the_pin_applies(ctl: Controller) -> None:
    ctl.tick()
    before = datetime.now(UTC)
    now_s = ctl.loop.now()
    response = pin(ctl, {"weights": ALL_THREE, "ttl_s": 600})
    assert response.status_code == 200
    body = response.json()
    assert body["controls"]["pin"] == ALL_THREE  # the route view is still all there
    plan = body["pin_plan"]
    assert plan["weights"] == ALL_THREE
    assert plan["until_s"] == pytest.approx(now_s + 600)
    assert plan["phase"] == "overridden" and plan["writes"] is True
    assert 0 <= plan["applies_in_s"] <= ctl.loop.tick_s
    at = datetime.fromisoformat(plan["applies_at"])
    offset = at.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert before <= at <= datetime.now(UTC) + timedelta(seconds=ctl.loop.tick_s)
    ctl.tick()
    route = ctl.client.get(STEADY_PATH).json()
    assert route["phase"] == "overridden" and route["weights"] == ALL_THREE
    again = pin(ctl, {"weights": ALL_THREE, "ttl_s": 600}).json()["pin_plan"]
    assert again["phase"] == "overridden" and again["writes"] is False
    assert "already in place" in again["detail"]


def test_a_pin_on_a_paused_or_shadowed_route_is_kept_unwritten(ctl: Controller) -> None:
    ctl.tick()
    ctl.client.post(f"{STEADY_PATH}/pause")
    paused = pin(ctl, {"weights": ALL_THREE, "ttl_s": 600}).json()["pin_plan"]
    assert paused["phase"] == "paused" and paused["writes"] is False
    assert "until resumed" in paused["detail"]
    ctl.tick()
    assert ctl.client.get(STEADY_PATH).json()["phase"] == "paused"
    ctl.client.post(f"{STEADY_PATH}/resume")
    ctl.client.post(f"{STEADY_PATH}/shadow", json={"enabled": True})
    shadow = pin(ctl, {"weights": ALL_THREE, "ttl_s": 600}).json()["pin_plan"]
    assert shadow["phase"] == "shadow" and shadow["writes"] is False
    ctl.tick()
    assert ctl.client.get(STEADY_PATH).json()["phase"] == "shadow"


def test_a_pin_on_a_failed_route_says_it_waits_for_the_route(
    ctl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctl.tick()
    status = ctl.loop.route_status

    def failed(route: RouteRef) -> RouteStatus:
        return replace(status(route), failed="RBAC: patch denied", phase="failed")

    monkeypatch.setattr(ctl.loop, "route_status", failed)
    plan = pin(ctl, {"weights": ALL_THREE, "ttl_s": 600}).json()["pin_plan"]
    assert plan["phase"] == "failed" and plan["writes"] is False
    assert plan["applies_at"] is None and plan["applies_in_s"] is None
    assert "RBAC: patch denied" in plan["detail"]


def test_with_the_loop_started_the_pin_applies_at_the_schedulers_next_run(
    ctl: Controller,
) -> None:
    ctl.loop.tick_s = 600.0  # one tick at start, the next one ten minutes later
    ctl.loop.start()
    try:
        deadline = time.monotonic() + 10
        while ctl.loop.ticks < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        job = ctl.loop.job
        assert job is not None and ctl.loop.ticks >= 1
        plan = pin(ctl, {"weights": ALL_THREE, "ttl_s": 900}).json()["pin_plan"]
        assert datetime.fromisoformat(plan["applies_at"]) == job.next_run_time
        assert 590 < plan["applies_in_s"] <= 600
    finally:
        ctl.loop.stop()


@pytest.mark.parametrize(
    "raw",
    [b'{"weights": {"v1": NaN}, "ttl_s": 60}', b"{not json", b"\xff\xfe\x00", b"[" * 5000],
)
def test_without_the_token_a_malformed_body_is_still_a_401(ctl: Controller, raw: bytes) -> None:
    anonymous = TestClient(ctl.app)
    for path in (f"{STEADY_PATH}/override", f"{CANARY_PATH}/shadow"):
        response = anonymous.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 401, (path, response.text)


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b"[" * 5000])
def test_a_body_that_cannot_be_parsed_is_a_documented_400(ctl: Controller, raw: bytes) -> None:
    ctl.tick()
    response = ctl.client.post(
        f"{STEADY_PATH}/override", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
    responses = ctl.client.get("/openapi.json").json()["paths"][
        "/routes/{ns}/{vs}/{route}/override"
    ]["post"]["responses"]
    assert "400" in responses
