"""`EnvoyRouteActuator` on a route file, with a fake Envoy admin port (or none).

Cases: it is an `Actuator`; `current` reads a route's weights in route order; `apply` rewrites
only the route's weights with the next version, by replacing the file, and returns once the
admin port reports that version; weights already in force are confirmed, not rewritten; a
missing virtual host, route or host, other subsets, a missing or malformed file and a broken
split raise the same error kinds as the VirtualService actuator, leaving the file alone (a
broken split blocks that route only, and a write repairs it, as a pin does); an
Envoy that does not load the new version in time, or whose admin port is down, is a
`TemporaryError` with the file written; two writer processes never lose each other's change.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.envoy import EnvoyRouteActuator
from meshcore import (
    Actuator,
    ConfigError,
    InvalidWeightsError,
    PermanentError,
    RouteRef,
    TemporaryError,
    Weights,
)
from meshcore.envoy_format import ROUTE_CONFIG_NAME, RouteSpec, read_route_document, route_document
from tests.helpers import free_port

REVIEWS = RouteRef("shop", "reviews", "default", "reviews.shop.svc.cluster.local")
RATINGS = RouteRef("shop", "ratings", "default", "ratings.shop.svc.cluster.local")


def _specs() -> list[RouteSpec]:
    return [
        RouteSpec(
            "reviews",
            "reviews.shop.svc.cluster.local",
            9080,
            Weights(["v1", "v2", "v3"], [60, 30, 10]),
            5000.0,
        ),
        RouteSpec(
            "ratings", "ratings.shop.svc.cluster.local", 9080, Weights(["a", "b"], [50, 50]), 250.0
        ),
    ]


class FakeEnvoyAdmin:
    """Answers ``/config_dump`` with the version of the route file (``follow``) or a fixed one."""

    def __init__(self, routes_file: Path) -> None:
        self.routes_file = routes_file
        self.stuck_at: int | None = None
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.startswith("/config_dump"):
                    self.send_error(404)
                    return
                if admin.stuck_at is not None:
                    version = admin.stuck_at
                else:
                    version = int(json.loads(admin.routes_file.read_text())["version_info"])
                body = json.dumps(
                    {
                        "configs": [
                            {
                                "version_info": str(version),
                                "route_config": {"name": ROUTE_CONFIG_NAME},
                            }
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(route_document(4, _specs())))
    return path


@pytest.fixture
def admin(routes_file: Path) -> Iterator[FakeEnvoyAdmin]:
    fake = FakeEnvoyAdmin(routes_file)
    yield fake
    fake.close()


@pytest.fixture
def actuator(routes_file: Path, admin: FakeEnvoyAdmin) -> EnvoyRouteActuator:
    return EnvoyRouteActuator(routes_file, admin.url, confirm_timeout_s=0.3)


def _read(path: Path) -> tuple[int, dict[str, Weights]]:
    version, specs = read_route_document(json.loads(path.read_text()))
    return version, {s.service: s.weights for s in specs}


def test_it_is_an_actuator(actuator: EnvoyRouteActuator) -> None:
    assert isinstance(actuator, Actuator)


def test_current_reads_the_weights_in_route_order(actuator: EnvoyRouteActuator) -> None:
    weights = actuator.current(REVIEWS)
    assert weights == Weights(["v1", "v2", "v3"], [60, 30, 10])
    assert weights.subsets == ("v1", "v2", "v3")
    assert actuator.discover(RATINGS) == ("a", "b")


def test_apply_writes_the_next_version_and_only_this_routes_weights(
    actuator: EnvoyRouteActuator, routes_file: Path
) -> None:
    inode = routes_file.stat().st_ino
    given = Weights(["v3", "v1", "v2"], [0, 25, 75])  # any order in, route order out
    out = actuator.apply(REVIEWS, given)
    assert out.subsets == ("v1", "v2", "v3") and out == given
    version, weights = _read(routes_file)
    assert version == 5
    assert weights == {"reviews": given, "ratings": Weights(["a", "b"], [50, 50])}
    assert routes_file.stat().st_ino != inode  # replaced: Envoy ignores in-place writes
    assert sorted(p.name for p in routes_file.parent.iterdir()) == [
        "routes.json",
        "routes.json.lock",
    ]
    assert actuator.current(REVIEWS) == given
    assert (actuator.writes, actuator.confirms) == (1, 1)


def test_weights_in_force_are_confirmed_not_rewritten(
    actuator: EnvoyRouteActuator, routes_file: Path, admin: FakeEnvoyAdmin
) -> None:
    inode = routes_file.stat().st_ino
    assert actuator.apply(RATINGS, Weights(["a", "b"], [50, 50])) == Weights(["a", "b"], [50, 50])
    assert routes_file.stat().st_ino == inode and _read(routes_file)[0] == 4
    admin.stuck_at = 3  # Envoy runs an older file than the one on disk: not confirmed
    with pytest.raises(TemporaryError, match="still runs version 3"):
        actuator.apply(RATINGS, Weights(["a", "b"], [50, 50]))


@pytest.mark.parametrize(
    ("route", "weights", "message"),
    [
        (
            RouteRef("shop", "details", "default", "details.shop.svc.cluster.local"),
            Weights(["v1"], [100]),
            "no virtual host 'details'",
        ),
        (
            RouteRef("shop", "reviews", "canary", REVIEWS.host),
            Weights(["v1", "v2", "v3"], [100, 0, 0]),
            "no http route named 'canary'",
        ),
        (
            RouteRef("shop", "reviews", 0, REVIEWS.host),
            Weights(["v1", "v2", "v3"], [100, 0, 0]),
            "no http route named 0",
        ),
        (
            RouteRef("shop", "reviews", "default", "ratings.shop.svc.cluster.local"),
            Weights(["v1", "v2", "v3"], [100, 0, 0]),
            "no destination for host ratings",
        ),
        (REVIEWS, Weights(["v1", "v2"], [50, 50]), "never adds or removes destinations"),
        (REVIEWS, Weights(["v1", "v2", "v4"], [50, 50, 0]), "never adds or removes"),
    ],
)
def test_what_the_file_does_not_hold_is_permanent_and_nothing_is_written(
    actuator: EnvoyRouteActuator,
    routes_file: Path,
    route: RouteRef,
    weights: Weights,
    message: str,
) -> None:
    before = routes_file.read_bytes()
    with pytest.raises(PermanentError, match=message):
        actuator.apply(route, weights)
    if "never adds" not in message:
        with pytest.raises(PermanentError, match=message):
            actuator.current(route)
    assert routes_file.read_bytes() == before


def test_a_short_host_name_means_the_same_service(actuator: EnvoyRouteActuator) -> None:
    short = RouteRef("shop", "reviews", "default", "reviews")
    assert actuator.current(short) == actuator.current(REVIEWS)


def test_apply_refuses_anything_but_weights(actuator: EnvoyRouteActuator) -> None:
    with pytest.raises(TypeError, match="needs a Weights"):
        actuator.apply(REVIEWS, {"v1": 100, "v2": 0, "v3": 0})  # type: ignore[arg-type]


def test_a_missing_or_malformed_file_is_permanent(tmp_path: Path, admin: FakeEnvoyAdmin) -> None:
    missing = EnvoyRouteActuator(tmp_path / "nope.json", admin.url)
    with pytest.raises(PermanentError, match="not found"):
        missing.current(REVIEWS)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        EnvoyRouteActuator(garbage, admin.url).current(REVIEWS)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"version_info": "1", "resources": []}))
    with pytest.raises(ConfigError, match="exactly one RouteConfiguration"):
        EnvoyRouteActuator(wrong, admin.url).apply(REVIEWS, Weights(["v1"], [100]))


def test_a_broken_split_is_an_invalid_weights_error_of_that_route_only_and_a_write_repairs_it(
    routes_file: Path, actuator: EnvoyRouteActuator
) -> None:
    doc = json.loads(routes_file.read_text())
    clusters = doc["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]
    clusters["clusters"][0]["weight"] = 90  # 90 + 30 + 10
    routes_file.write_text(json.dumps(doc))
    with pytest.raises(InvalidWeightsError) as info:
        actuator.current(REVIEWS)
    assert info.value.weights == {"v1": 90, "v2": 30, "v3": 10}
    assert actuator.discover(REVIEWS) == ("v1", "v2", "v3")
    assert actuator.current(RATINGS) == Weights(["a", "b"], [50, 50])  # the others still work
    actuator.apply(RATINGS, Weights(["a", "b"], [40, 60]))
    with pytest.raises(InvalidWeightsError):
        actuator.current(REVIEWS)  # left exactly as it was
    repaired = Weights(["v1", "v2", "v3"], [80, 10, 10])
    assert actuator.apply(REVIEWS, repaired) == repaired  # as a pin repairs a VirtualService
    assert _read(routes_file) == (
        6,
        {"reviews": repaired, "ratings": Weights(["a", "b"], [40, 60])},
    )


def test_an_envoy_that_does_not_load_the_file_is_temporary_and_the_file_stays(
    actuator: EnvoyRouteActuator, routes_file: Path, admin: FakeEnvoyAdmin
) -> None:
    admin.stuck_at = 4
    wanted = Weights(["v1", "v2", "v3"], [0, 0, 100])
    with pytest.raises(TemporaryError, match="version 5 written but Envoy still runs version 4"):
        actuator.apply(REVIEWS, wanted)
    assert _read(routes_file) == (5, {"reviews": wanted, "ratings": Weights(["a", "b"], [50, 50])})
    admin.stuck_at = None  # Envoy catches up: the next apply confirms without writing again
    assert actuator.apply(REVIEWS, wanted) == wanted
    assert _read(routes_file)[0] == 5


def test_an_unreachable_admin_port_is_temporary_and_the_file_stays(routes_file: Path) -> None:
    actuator = EnvoyRouteActuator(routes_file, f"http://127.0.0.1:{free_port()}")
    wanted = Weights(["a", "b"], [10, 90])
    with pytest.raises(TemporaryError, match=r"version 5 written, not confirmed.*unreachable"):
        actuator.apply(RATINGS, wanted)
    assert _read(routes_file)[1]["ratings"] == wanted


def test_settings_are_validated(routes_file: Path) -> None:
    with pytest.raises(ConfigError, match="http://"):
        EnvoyRouteActuator(routes_file, "127.0.0.1:9901")
    with pytest.raises(ConfigError, match="confirm_timeout_s"):
        EnvoyRouteActuator(routes_file, "http://127.0.0.1:9901", confirm_timeout_s=0)


def _writer(routes_file: str, admin_url: str, route: RouteRef, subsets: list[str], n: int) -> None:
    actuator = EnvoyRouteActuator(Path(routes_file), admin_url, confirm_timeout_s=5)
    for i in range(n):
        first = (i * 7) % 101
        actuator.apply(route, Weights(subsets, [first, 100 - first, *([0] * (len(subsets) - 2))]))


def test_two_writer_processes_never_lose_each_others_change(
    routes_file: Path, admin: FakeEnvoyAdmin
) -> None:
    n = 25
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_writer, args=(str(routes_file), admin.url, REVIEWS, ["v1", "v2", "v3"], n)
        ),
        ctx.Process(target=_writer, args=(str(routes_file), admin.url, RATINGS, ["a", "b"], n)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    version, weights = _read(routes_file)
    last = ((n - 1) * 7) % 101
    assert weights == {
        "reviews": Weights(["v1", "v2", "v3"], [last, 100 - last, 0]),
        "ratings": Weights(["a", "b"], [last, 100 - last]),
    }
    # Every apply changed its route's weights (i*7 % 101 never repeats back to back) and
    # none was lost: one version per apply.
    assert version == 4 + 2 * n
