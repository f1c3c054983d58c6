"""Schemathesis over the whole OpenAPI schema, in process, with and without the token.

Why: the schema is the contract operators and their tools read; every answer the API gives
must be in it. For every operation, Hypothesis generates requests from the schema — valid
ones and deliberately invalid ones (negative mode), plus valid ones aimed at the managed
routes, real decision ids and well-formed pins so mutations really happen — and each answer
is checked: no 5xx, a documented status code and content type, a body that matches the
documented model, and invalid data rejected. Both with the operator's bearer token (controls
act) and without (controls are 401s). The loop ticks between cases, so routes move through
phases and the audit log grows while the fuzzer reads it.

A second test runs the schemathesis command line, as an operator would, against the same
app behind a real uvicorn server: all its phases (schema examples, coverage of boundaries and
unsupported methods, fuzzing, stateful sequences) and all its checks, with and without the
token. Its one allowance: a body valid by the schema may still be a 422 on
``POST .../override`` (the weights of a route sum to 100 and name its subsets, which JSON
Schema cannot say).

Repeatable (``derandomize``, deterministic generation, no example database) and bounded: at
least `MIN_CASES` requests in process plus about as many over HTTP, under a minute on one
core.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.unit.controller.api.support import (
    MAX_TTL_S,
    OPERATOR,
    TOKEN,
    Controller,
    controller,
    serving,
)

MIN_CASES = 1000
"""Generated requests the run must make over all operations and both auth modes at least."""
EXAMPLES_PER_OPERATION = 45
"""Hypothesis ``max_examples`` per operation and auth mode (an operation without parameters
exhausts its few distinct requests sooner)."""
TICK_EVERY = 40
"""Cases between two ticks of the loop (the sim mesh advances one step each)."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

ROUTE_PARAMS = ("ns", "vs", "route")


@pytest.fixture(scope="module")
def ctl() -> Iterator[Controller]:
    with controller() as c:
        c.tick(3)  # subsets known, a few decisions recorded
        yield c


def _real_routes(ctl: Controller) -> list[dict[str, str]]:
    return [
        {"ns": r.namespace, "vs": r.virtual_service, "route": str(r.route)} for r in ctl.loop.routes
    ]


def _valid_pins(ctl: Controller) -> st.SearchStrategy[tuple[dict[str, str], dict[str, Any]]]:
    """(path, body) of pins the API must accept: every subset named, points summing to 100,
    a TTL within one tick .. api.max_override_ttl_s."""

    def pins_for(path: dict[str, str]) -> st.SearchStrategy[tuple[dict[str, str], dict[str, Any]]]:
        route = ctl.loop.find(f"{path['ns']}/{path['vs']}/{path['route']}")
        assert route is not None
        weights = ctl.loop.route_status(route).weights
        assert weights is not None
        subsets = list(weights.subsets)

        @st.composite
        def pin(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any]]:
            cuts = sorted(
                draw(
                    st.lists(
                        st.integers(0, 100), min_size=len(subsets) - 1, max_size=len(subsets) - 1
                    )
                )
            )
            points = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
            ttl = draw(st.floats(ctl.loop.tick_s, MAX_TTL_S, allow_nan=False))
            body = {"weights": dict(zip(subsets, points, strict=True)), "ttl_s": ttl}
            return path, body

        return pin()

    return st.sampled_from(_real_routes(ctl)).flatmap(pins_for)


def _strategy(op: Any, ctl: Controller) -> st.SearchStrategy[Any]:
    """Cases of one operation: from the schema alone (valid and invalid), and valid ones
    aimed at what exists (managed routes, recorded decision ids)."""
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    options = [op.as_strategy(positive), op.as_strategy(negative)]
    names = {p.name for p in op.path_parameters}
    if set(ROUTE_PARAMS) <= names:
        for path in _real_routes(ctl):
            options.append(op.as_strategy(positive, path_parameters=path))
            options.append(op.as_strategy(negative, path_parameters=path))
    if names == {"decision_id"}:
        for decision_id in (1, 2, 3, 4):
            options.append(op.as_strategy(positive, path_parameters={"decision_id": decision_id}))
    return st.one_of(options)


def test_every_operation_survives_the_fuzzer_with_and_without_the_token(
    ctl: Controller,
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", ctl.app)
    results = list(schema.get_all_operations())
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) == len(results), "every operation of the schema must load"
    assert len(operations) >= 12
    pins = _valid_pins(ctl)
    seen: Counter[tuple[str, str, int]] = Counter()
    count = 0
    started = time.perf_counter()

    def call(case: Any, headers: dict[str, str]) -> int:
        nonlocal count
        count += 1
        if count % TICK_EVERY == 0:
            ctl.tick()
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        return int(response.status_code)

    for auth, headers in (("token", OPERATOR), ("anonymous", {})):
        for op in operations:
            run = _fuzz(op, _strategy(op, ctl), pins, headers, call, seen, auth)
            run()
    elapsed = time.perf_counter() - started
    per_status = Counter((auth, status) for auth, _, status in seen.elements())
    print(
        f"\nschemathesis: {count} cases over {len(operations)} operations x 2 auth modes "
        f"in {elapsed:.1f} s; statuses {dict(sorted(per_status.items()))}"
    )
    assert count >= MIN_CASES
    controls = [op.label for op in operations if op.label.startswith(("POST", "DELETE"))]
    for label in controls:  # the token mode exercised every control for real
        assert seen["token", label, 200] > 0, label
        assert all(s == 401 for a, lab, s in seen if a == "anonymous" and lab == label), label
    assert all(s < 500 for _, _, s in seen)


def _fuzz(
    op: Any,
    strategy: st.SearchStrategy[Any],
    pins: st.SearchStrategy[tuple[dict[str, str], dict[str, Any]]],
    headers: dict[str, str],
    call: Callable[[Any, dict[str, str]], int],
    seen: Counter[tuple[str, str, int]],
    auth: str,
) -> Callable[[], None]:
    is_override = op.label == "POST /routes/{ns}/{vs}/{route}/override"
    choose_pin = st.booleans() if is_override else st.just(False)

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, use_pin=choose_pin, pin=pins)
    def run(case: Any, use_pin: bool, pin: tuple[dict[str, str], dict[str, Any]]) -> None:
        if use_pin:  # a well-formed pin on a managed route: must be accepted with the token
            case = op.Case(path_parameters=pin[0], body=pin[1], media_type="application/json")
        status = call(case, headers)
        seen[auth, op.label, status] += 1
        if use_pin and auth == "token":
            assert status == 200, (case.path_parameters, case.body)

    return run


CLI_EXAMPLES = 30
"""``--max-examples`` of the command-line run (per operation and phase)."""
CLI_CONFIG = """
[[operations]]
include-name = "POST /routes/{ns}/{vs}/{route}/override"
checks.positive_data_acceptance.expected-statuses = ["2XX", "401", "404", "409", "422"]
"""
"""Schema-valid overrides may be 422s: the sum of 100 and the subset names are not in it."""


@pytest.mark.parametrize("auth", ["token", "anonymous"])
def test_the_schemathesis_command_line_finds_nothing(
    ctl: Controller, tmp_path: Path, auth: str
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CLI_CONFIG)
    report = tmp_path / "report.json"
    headers = ["-H", f"Authorization: Bearer {TOKEN}"] if auth == "token" else []
    with serving(ctl.app) as base:
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                f"{base}/openapi.json",
                *headers,
                "--checks",
                "all",
                "--max-examples",
                str(CLI_EXAMPLES),
                "--generation-deterministic",
                "--no-color",
                "--report",
                "json",
                "--report-json-path",
                str(report),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.perf_counter() - started
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    cases = result["test_cases"]
    print(
        f"\nschemathesis run ({auth}): {cases['generated']} cases, all phases, in {elapsed:.1f} s"
    )
    assert done.returncode == 0, done.stdout[-6000:]
    assert result["failures"] == [] and result["errors"] == []
    assert result["operations"]["tested"] == result["operations"]["total"] >= 12
    assert cases["generated"] >= 300
