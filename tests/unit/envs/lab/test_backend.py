"""The lab backend, run as its own process on free ports (no Envoy).

Cases: a replica's capacity is exact (a burst of N requests on a FCFS replica of nearly fixed
service time ends after N * mean / concurrency, which a per-request sleep would overshoot);
responses name their service and subset; error_rate 1.0 answers every request 503; a full
replica answers 503 at once; `POST /set` changes errors and parameters at run time, ramps
linearly, and counters add up; `replicas` cannot change; malformed or hostile control
requests get 4xx and never bring the process down (huge numbers included); a web page cannot
use the control endpoint (Origin refused, non-JSON bodies refused); control connections are
capped and idle ones closed; replicas and control endpoint parse heads alike (Connection
tokens, conflicting Content-Length); control errors are `TemporaryError`s; SIGTERM exits 0;
the config round-trips through JSON and rejects bad files;
the lab file; the CLI has --help and raises its open-files limit.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.lab import backend as backend_module
from envs.lab.backend import MAX_CONTROL_CONNECTIONS, Backend
from envs.lab.backend_client import (
    BackendControlError,
    _call,
    backend_state,
    reseed,
    set_subset,
    wait_backend_ready,
)
from envs.lab.backend_config import BackendConfig
from envs.lab.http_head import RequestError, parse_request_head
from envs.lab.replica import SETTABLE
from meshcore.errors import MeshpilotError, TemporaryError
from tests.helpers import free_port
from tests.unit.envs.lab import REPO, backend_config, running_backend

pytestmark = pytest.mark.timeout(60)

SERVICES: dict[str, dict[str, dict[str, Any]]] = {
    "exact": {
        "c1": {"service_ms": 5.0, "service_dist": "lognormal", "cv": 0.05},
        "c4": {"service_ms": 20.0, "service_dist": "lognormal", "cv": 0.05, "concurrency": 4},
    },
    "broken": {"v1": {"service_ms": 1.0, "error_rate": 1.0}},
    "mut": {"v1": {"service_ms": 2.0}, "v2": {"service_ms": 2.0, "replicas": 2}},
    "limited": {
        "v1": {"service_ms": 400.0, "service_dist": "lognormal", "cv": 0.01, "queue_limit": 2}
    },
    "fuzz": {"v1": {"service_ms": 1.0}},
    "coin": {"v1": {"service_ms": 1.0, "error_rate": 0.5}},
}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendConfig]:
    config = backend_config(SERVICES, seed=7)
    with running_backend(config, tmp_path_factory.mktemp("backend")):
        yield config


def port_of(config: BackendConfig, service: str, subset: str, replica: int = 0) -> int:
    for svc in config.services:
        for sub in svc.subsets:
            if svc.service == service and sub.name == subset:
                return sub.ports[replica]
    raise KeyError((service, subset))


def get(port: int, n: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """`n` GET / on one keep-alive connection: (status, lower-cased headers, body) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            conn.request("GET", "/", headers={"Host": "test"})
            resp = conn.getresponse()
            out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
    finally:
        conn.close()
    return out


JSON = {"Content-Type": "application/json"}


def control(
    config: BackendConfig,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """(status, JSON answer); a body goes as application/json unless `headers` say else."""
    if headers is None:
        headers = JSON if body is not None else {}
    conn = http.client.HTTPConnection("127.0.0.1", config.control_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    """Send raw bytes and half-close; read until the server closes (or 5 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def counters(config: BackendConfig, service: str, subset: str) -> dict[str, Any]:
    state: dict[str, Any] = backend_state(config.control_url)["services"][service][subset]
    return state


# ---- capacity ------------------------------------------------------------------------------


async def _burst_makespan_s(port: int, n: int) -> tuple[float, list[int]]:
    """Open `n` connections, send one GET on each at once, return (time to last answer, codes)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.close()
        return int(head.split(b" ")[1])

    t0 = time.perf_counter()
    for _, writer in conns:
        writer.write(b"GET / HTTP/1.1\r\nHost: exact\r\n\r\n")
    codes = await asyncio.gather(*(one(r, w) for r, w in conns))
    return time.perf_counter() - t0, list(codes)


@pytest.mark.parametrize(("subset", "mean_ms", "concurrency"), [("c1", 5.0, 1), ("c4", 20.0, 4)])
def test_a_burst_takes_exactly_n_service_times(
    backend: BackendConfig, subset: str, mean_ms: float, concurrency: int
) -> None:
    # 200 requests at once on a FCFS replica whose service time has cv 0.05: the last answer
    # leaves after the sum of the service times (1 s, sd ~4 ms). A backend sleeping each
    # service time would add ~0.9 ms per request and end ~18 % late.
    n = 200
    makespan_s, codes = asyncio.run(_burst_makespan_s(port_of(backend, "exact", subset), n))
    expected_s = n * mean_ms / 1000.0 / concurrency
    assert codes == [200] * n
    assert 0.97 * expected_s < makespan_s < 1.10 * expected_s


# ---- responses -----------------------------------------------------------------------------


def test_responses_name_their_service_and_subset(backend: BackendConfig) -> None:
    for subset in ("v1", "v2"):
        for replica in range(2 if subset == "v2" else 1):
            [(status, headers, body)] = get(port_of(backend, "mut", subset, replica))
            assert status == 200
            assert headers["x-meshpilot-subset"] == subset
            assert headers["x-meshpilot-service"] == "mut"
            assert body == b"ok\n"


def test_error_rate_one_answers_every_request_503(backend: BackendConfig) -> None:
    before = counters(backend, "broken", "v1")
    answers = get(port_of(backend, "broken", "v1"), 25)
    assert [s for s, _, _ in answers] == [503] * 25
    assert {h["x-meshpilot-reason"] for _, h, _ in answers} == {"error"}
    assert {h["x-meshpilot-subset"] for _, h, _ in answers} == {"v1"}
    after = counters(backend, "broken", "v1")
    assert after["errors"] - before["errors"] == 25
    assert after["served"] - before["served"] == 25


async def _concurrent_statuses(port: int, n: int) -> list[tuple[int, bytes]]:
    async def one() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: limited\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        reason = head.lower().partition(b"x-meshpilot-reason: ")[2].split(b"\r\n")[0]
        return int(head.split(b" ")[1]), reason

    return list(await asyncio.gather(*(one() for _ in range(n))))


def test_a_full_replica_rejects_at_once(backend: BackendConfig) -> None:
    before = counters(backend, "limited", "v1")
    answers = sorted(asyncio.run(_concurrent_statuses(port_of(backend, "limited", "v1"), 5)))
    assert answers == [
        (200, b""),
        (200, b""),
        (503, b"overload"),
        (503, b"overload"),
        (503, b"overload"),
    ]
    after = counters(backend, "limited", "v1")
    assert after["rejected"] - before["rejected"] == 3
    assert after["requests"] - before["requests"] == 5
    assert after["queue_limit"] == 2


def test_malformed_requests_to_a_replica_get_400(backend: BackendConfig) -> None:
    port = port_of(backend, "fuzz", "v1")
    assert raw(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(port, b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000).startswith(b"HTTP/1.1 431")
    [(status, _, _)] = get(port)
    assert status == 200


def test_pipelined_requests_are_answered_in_order(backend: BackendConfig) -> None:
    port = port_of(backend, "fuzz", "v1")
    reply = raw(port, b"GET / HTTP/1.1\r\n\r\n" * 4)
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    closing = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + b"GET / HTTP/1.1\r\n\r\n"
    assert raw(port, closing).count(b"HTTP/1.1 200 OK") == 1


# ---- run-time changes ----------------------------------------------------------------------


def test_set_changes_errors_at_run_time(backend: BackendConfig) -> None:
    port = port_of(backend, "mut", "v1")
    assert {s for s, _, _ in get(port, 10)} == {200}
    set_subset(backend.control_url, "mut", "v1", {"error_rate": 1.0})
    try:
        assert {s for s, _, _ in get(port, 10)} == {503}
        assert {s for s, _, _ in get(port_of(backend, "mut", "v2"), 5)} == {200}
    finally:
        set_subset(backend.control_url, "mut", "v1", {"error_rate": 0.0})
    assert {s for s, _, _ in get(port, 10)} == {200}


def test_reseeding_replays_the_same_draws(backend: BackendConfig) -> None:
    """Sequential requests to one replica after `reseed(s)` meet the same error draws, request
    by request; another seed gives another sequence (64 coin flips: equal by chance 2**-64)."""
    port = port_of(backend, "coin", "v1")

    def flips(seed: int) -> list[int]:
        assert reseed(backend.control_url, seed)["replicas"] == backend_replicas(backend)
        return [s for s, _, _ in get(port, 64)]

    first = flips(11)
    assert 0 < first.count(503) < 64
    assert flips(11) == first
    assert flips(12) != first


@pytest.mark.parametrize(
    "body", [{}, {"seed": -1}, {"seed": True}, {"seed": 1.5}, {"seed": 2**63}, {"seed": 1, "x": 2}]
)
def test_a_bad_reseed_body_is_a_400(backend: BackendConfig, body: dict[str, Any]) -> None:
    with pytest.raises(BackendControlError, match="400"):
        _call(backend.control_url + "/reseed", json.dumps(body).encode())


def backend_replicas(config: BackendConfig) -> int:
    return sum(len(sub.ports) for svc in config.services for sub in svc.subsets)


def test_set_ramps_linearly_and_reports_targets(backend: BackendConfig) -> None:
    reply = set_subset(backend.control_url, "mut", "v2", {"service_ms": 12.0, "cv": 0.5}, 1000.0)
    try:
        state = reply["state"]
        assert state["targets"]["service_ms"] == 12.0
        assert state["ramping"] is True
        time.sleep(0.2)
        now = counters(backend, "mut", "v2")
        assert 2.0 < now["service_ms"] < 2.0 + 10.0 * 5.0 / 1000.0
        assert 1.0 > now["cv"] > 0.99
    finally:
        set_subset(backend.control_url, "mut", "v2", {"service_ms": 2.0, "cv": 1.0})
    done = counters(backend, "mut", "v2")
    assert (done["service_ms"], done["cv"], done["ramping"]) == (2.0, 1.0, False)


def test_replicas_cannot_change_at_run_time(backend: BackendConfig) -> None:
    with pytest.raises(BackendControlError, match="'replicas' cannot change at run time"):
        set_subset(backend.control_url, "mut", "v1", {"replicas": 3})
    assert counters(backend, "mut", "v1")["replicas"] == 1


def test_state_lists_every_subset_with_counters(backend: BackendConfig) -> None:
    state = backend_state(backend.control_url)
    assert {s: sorted(v) for s, v in state["services"].items()} == {
        s: sorted(subs) for s, subs in SERVICES.items()
    }
    v2 = state["services"]["mut"]["v2"]
    assert v2["replicas"] == 2 and len(v2["per_replica"]) == 2
    for key in ("requests", "served", "errors", "rejected", "in_flight", "queued", *SETTABLE):
        assert key in v2


HOSTILE = [
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"{}", 400, "must be strings"),
    (b'{"service": "nope", "subset": "v1", "set": {"cv": 1}}', 400, "no subset nope/v1"),
    (b'{"service": "fuzz", "subset": "v9", "set": {"cv": 1}}', 400, "no subset fuzz/v9"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"speed": 1}}', 400, "not settable"),
    (b'{"service": "fuzz", "subset": "v1", "set": {}}', 400, "non-empty"),
    (b'{"service": "fuzz", "subset": "v1", "set": [1]}', 400, "non-empty"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": "1"}}', 400, "must be a number"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": true}}', 400, "must be a number"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": NaN}}', 400, "not valid JSON"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": 1e999}}', 400, "finite"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": 1' + b"0" * 400 + b"}}", 400, "finite"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": -' + b"9" * 400 + b"}}", 400, "finite"),
    (
        b'{"service": "fuzz", "subset": "v1", "set": {"cv": 1}, "ramp_s": 1' + b"0" * 400 + b"}",
        400,
        "finite",
    ),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": 1' + b"0" * 5000 + b"}}", 400, "JSON"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"error_rate": 1.5}}', 400, "within"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"service_ms": 0}}', 400, "within"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"capacity_factor": -1}}', 400, "within"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": 1}, "ramp_s": -1}', 400, "ramp_s"),
    (b'{"service": "fuzz", "subset": "v1", "set": {"cv": 1}, "extra": 1}', 400, "unknown keys"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 10_000, 400, "not valid JSON"),
    (b'{"a": "' + b"x" * 20_000 + b'"}', 413, "larger than"),
]


@pytest.mark.parametrize(("body", "status", "message"), HOSTILE)
def test_hostile_set_bodies_get_a_clear_4xx(
    backend: BackendConfig, body: bytes, status: int, message: str
) -> None:
    code, payload = control(backend, "POST", "/set", body)
    assert (code, message in payload["error"]) == (status, True), payload
    assert control(backend, "GET", "/healthz") == (200, {"ok": True})


def test_a_web_page_cannot_use_the_control_endpoint(backend: BackendConfig) -> None:
    # A cross-site "simple" request (text/plain POST, no preflight) or any request a browser
    # marks with Origin is refused, and changes nothing.
    body = json.dumps({"service": "fuzz", "subset": "v1", "set": {"error_rate": 1.0}}).encode()
    page = {"Origin": "http://evil.example"}
    assert control(backend, "POST", "/set", body, {"Content-Type": "text/plain"})[0] == 415
    assert control(backend, "POST", "/set", body, {})[0] == 415
    assert control(backend, "POST", "/set", body, {**JSON, **page})[0] == 403
    assert control(backend, "POST", "/set", body, {"Origin": "null", **JSON})[0] == 403
    assert control(backend, "GET", "/state", None, page)[0] == 403
    assert counters(backend, "fuzz", "v1")["targets"]["error_rate"] == 0.0
    harmless = {"service": "fuzz", "subset": "v1", "set": {"cv": 1.0}}
    charset = {"Content-Type": "Application/JSON; charset=utf-8"}
    assert control(backend, "POST", "/set", json.dumps(harmless).encode(), charset)[0] == 200


def test_control_errors_are_temporary_errors_with_a_clear_message(
    backend: BackendConfig,
) -> None:
    assert issubclass(BackendControlError, TemporaryError)
    with pytest.raises(MeshpilotError, match=r"/set: 400 no subset fuzz/v9"):
        set_subset(backend.control_url, "fuzz", "v9", {"cv": 1.0})
    with pytest.raises(TemporaryError, match=r"not ready after 0\.1 s"):
        wait_backend_ready(f"http://127.0.0.1:{free_port()}", 0.1)


def test_wrong_paths_and_methods(backend: BackendConfig) -> None:
    assert control(backend, "GET", "/nope")[0] == 404
    assert control(backend, "GET", "/set")[0] == 405
    assert control(backend, "POST", "/state", b"{}")[0] == 405


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"garbage\r\n\r\n", b"HTTP/1.1 400"),
        (b"POST /set HTTP/1.1\r\nContent-Length: -3\r\n\r\n", b"HTTP/1.1 400"),
        (b"POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"HTTP/1.1 400"),
        (b"POST /set HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", b"HTTP/1.1 413"),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n", b"HTTP/1.1 431"),
        (b"POST /set HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", b""),
        (b"GET /healthz HTTP/1.1\r\nbroken header\r\n\r\n", b"HTTP/1.1 400"),
        (
            b"POST /set HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 400",
        ),
        (b"POST /set HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n", b"HTTP/1.1 400"),
    ],
)
def test_malformed_control_requests_never_crash(
    backend: BackendConfig, data: bytes, answer: bytes
) -> None:
    reply = raw(backend.control_port, data)
    assert reply.startswith(answer)
    assert control(backend, "GET", "/healthz") == (200, {"ok": True})


def _connection_header(reply: bytes) -> bytes:
    return reply.lower().partition(b"\r\nconnection: ")[2].split(b"\r\n")[0]


@pytest.mark.parametrize(
    ("version", "header", "closes"),
    [
        (b"HTTP/1.1", b"", False),
        (b"HTTP/1.1", b"Connection: close\r\n", True),
        (b"HTTP/1.1", b"Connection: keep-alive, close\r\n", True),
        (b"HTTP/1.1", b"Connection: Upgrade\r\n", False),
        (b"HTTP/1.0", b"", True),
        (b"HTTP/1.0", b"Connection: TE\r\n", True),
        (b"HTTP/1.0", b"Connection: Keep-Alive\r\n", False),
    ],
)
def test_replicas_and_control_endpoint_agree_on_connection_handling(
    backend: BackendConfig, version: bytes, header: bytes, closes: bool
) -> None:
    # Two requests on one connection: the second is answered only when the first keeps it
    # open; the control endpoint also says so in its Connection header.
    first = b"GET / " + version + b"\r\n" + header + b"\r\n"
    second = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    replica = raw(port_of(backend, "fuzz", "v1"), first + second)
    assert replica.count(b"HTTP/1.1 200") == (1 if closes else 2)
    first = first.replace(b"GET / ", b"GET /healthz ")
    control_reply = raw(backend.control_port, first + second.replace(b" / ", b" /healthz "))
    assert control_reply.count(b"HTTP/1.1 200") == (1 if closes else 2)
    assert _connection_header(control_reply) == (b"close" if closes else b"keep-alive")


@settings(max_examples=300, deadline=None)
@given(
    head=st.lists(
        st.sampled_from([b"GET / HTTP/1.1", b"Content-Length: ", b"Connection: ", b"close"])
        | st.binary(max_size=12),
        max_size=8,
    ).map(b"".join)
)
def test_any_head_parses_or_is_a_400(head: bytes) -> None:
    try:
        request = parse_request_head(head)
    except RequestError as err:
        assert err.status == 400
    else:
        assert request.length >= 0


async def _connection_cap_probe(config: BackendConfig) -> tuple[bytes, bytes]:
    """(answer on a connection beyond the cap, answer once one held connection closed)."""
    backend = Backend(config)
    await backend.start()
    writers: list[asyncio.StreamWriter] = []

    async def ask() -> bytes:
        """GET /healthz on a new connection kept open: the start of the answer, b"" if none."""
        reader, writer = await asyncio.open_connection("127.0.0.1", config.control_port)
        writers.append(writer)
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        try:
            return await asyncio.wait_for(reader.read(12), 5.0)
        except ConnectionError:
            return b""

    try:
        for _ in range(MAX_CONTROL_CONNECTIONS):
            assert await ask() == b"HTTP/1.1 200"  # answered, so counted, and kept open
        beyond = await ask()
        writers[0].close()
        again = b""
        for _ in range(100):  # until the backend has seen the close
            again = await ask()
            if again:
                break
            await asyncio.sleep(0.02)
        return beyond, again
    finally:
        for writer in writers:
            writer.close()
        for _ in range(100):  # let the handlers end before the loop does
            if backend._control_open == 0:
                break
            await asyncio.sleep(0.02)
        backend.close()


def test_control_connections_beyond_the_cap_are_closed_at_once() -> None:
    config = backend_config({"s": {"v1": {"service_ms": 1.0}}})
    beyond, again = asyncio.run(_connection_cap_probe(config))
    assert beyond == b""
    assert again == b"HTTP/1.1 200"


async def _idle_closed(config: BackendConfig, data: bytes) -> bool:
    backend = Backend(config)
    await backend.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", config.control_port)
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), 10.0) == b""
        except ConnectionError:
            return True
    finally:
        backend.close()


@pytest.mark.parametrize(
    "data", [b"", b"GET /healthz HTTP/1.1\r\n", b"POST /set HTTP/1.1\r\nContent-Length: 9\r\n\r\n{"]
)
def test_idle_control_connections_are_closed(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(backend_module, "CONTROL_IDLE_S", 0.2)
    config = backend_config({"s": {"v1": {"service_ms": 1.0}}})
    assert asyncio.run(_idle_closed(config, data))


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = st.sampled_from([*SETTABLE, "replicas", "bogus"])
_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "service": st.sampled_from(["fuzz", "nope"]) | _JSON,
        "subset": st.sampled_from(["v1", "v9"]) | _JSON,
        "set": st.dictionaries(_FIELDS, st.floats(allow_nan=False) | _JSON, max_size=3) | _JSON,
        "ramp_s": st.floats(allow_nan=False) | _JSON,
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_BODIES | _JSON)
def test_any_json_body_is_applied_or_refused_never_a_500(backend: BackendConfig, body: Any) -> None:
    code, payload = control(backend, "POST", "/set", json.dumps(body).encode())
    assert code in (200, 400), payload
    if code == 200:
        state = payload["state"]
        for field, (low, high, _) in SETTABLE.items():
            assert low <= state["targets"][field] <= high


# ---- process and config --------------------------------------------------------------------


def test_sigterm_exits_zero_and_frees_the_ports(tmp_path: Path) -> None:
    config = backend_config({"one": {"v1": {"service_ms": 1.0}}})
    with running_backend(config, tmp_path) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port_of(config, "one", "v1")))
    with pytest.raises(BackendControlError, match="not ready"):
        wait_backend_ready(config.control_url, 0.2)


def test_config_round_trips_through_json() -> None:
    config = backend_config(SERVICES, seed=3)
    assert BackendConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"control_port": 0}, "control_port"),
        ({"services": []}, "services"),
        ({"seed": -1}, "seed"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_configs_are_refused_with_the_field(change: dict[str, Any], message: str) -> None:
    data = json.loads(backend_config({"s": {"v1": {"service_ms": 1.0}}}).to_json())
    data.update(change)
    with pytest.raises(ValueError, match=message):
        BackendConfig.from_json(json.dumps(data))


def test_duplicate_ports_and_bad_subsets_are_refused() -> None:
    data = json.loads(
        backend_config({"s": {"a": {"service_ms": 1.0}, "b": {"service_ms": 1.0}}}).to_json()
    )
    data["services"][0]["subsets"][1]["ports"] = data["services"][0]["subsets"][0]["ports"]
    with pytest.raises(ValueError, match="own port"):
        BackendConfig.from_json(json.dumps(data))
    data["services"][0]["subsets"][1]["service_dist"] = "pareto"
    with pytest.raises(ValueError, match="service_dist"):
        BackendConfig.from_json(json.dumps(data))


def test_cli_help_and_bad_config(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "envs.lab.backend", "--help"],
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert ok.returncode == 0 and b"--config" in ok.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"seed": 1}')
    run = subprocess.run(
        [sys.executable, "-m", "envs.lab.backend", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert run.returncode == 2 and b"backend config" in run.stderr


def test_main_raises_the_open_files_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []

    def spy() -> int:
        calls.append(1)
        return 0

    monkeypatch.setattr(backend_module, "raise_nofile_limit", spy)
    assert backend_module.main(["--config", str(tmp_path / "missing.json")]) == 2
    assert calls == [1]
    assert "backend:" in capsys.readouterr().err
