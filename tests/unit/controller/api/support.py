"""What the API tests share: a real loop over the simulated mesh, its app and a client.

The loop is advanced by hand (`Controller.tick`), so no thread races the requests; the app is
the one `meshpilot serve` builds (`controller.api.app.create_app`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from agents.registry import make_policy
from controller.api.app import create_app
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.settings import Settings, load_settings
from controller.store import DecisionStore
from envs.simulator.realtime import RealtimeSimulatedMesh, route_for
from envs.simulator.scenario import load_scenario

CANARY = route_for("degraded-canary")
STEADY = route_for("steady-80")
CANARY_PATH = "/routes/lirmm-services/degraded-canary/default"
STEADY_PATH = "/routes/lirmm-services/steady-80/default"
TOKEN = "operator-token-for-the-tests"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
MAX_TTL_S = 3600.0
"""api.max_override_ttl_s of the test app (s)."""


@dataclass
class Controller:
    mesh: RealtimeSimulatedMesh
    loop: ControlLoop
    guard: Guard
    store: DecisionStore
    settings: Settings
    client: TestClient

    @property
    def app(self) -> FastAPI:
        app: FastAPI = self.client.app  # type: ignore[assignment]
        return app

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.mesh.advance()
            self.loop.tick()


def build_loop(
    mesh: RealtimeSimulatedMesh,
    guard: Guard,
    store: DecisionStore,
    *,
    writer_id: str = "pod-test",
    leader: object = None,
    tick_s: float = 5.0,
) -> ControlLoop:
    return ControlLoop(
        observer=mesh,
        actuator=mesh,
        policy=make_policy("proportional"),
        guard=guard,
        store=store,
        routes=mesh.routes,
        clock=mesh.clock,
        slo_ms=250.0,
        writer_id=writer_id,
        verify_after_s=30.0,
        verify_tolerance=10.0,
        leader=leader,  # type: ignore[arg-type]
        tick_s=tick_s,
    )


@contextmanager
def controller(*, tick_s: float = 5.0, sim_speed: float = 1.0) -> Iterator[Controller]:
    """The degraded-canary and steady-80 routes, a client carrying the operator's token;
    `sim_speed` is only told to the settings (the mesh is advanced by hand)."""
    mesh = RealtimeSimulatedMesh.from_scenarios(
        scenarios=[load_scenario("degraded-canary"), load_scenario("steady-80")], seed=3
    )
    guard = Guard(GuardConfig(max_step=10))
    store = DecisionStore(":memory:")
    settings = load_settings(api={"max_override_ttl_s": MAX_TTL_S}, sim={"speed": sim_speed})
    loop = build_loop(mesh, guard, store, tick_s=tick_s)
    app = create_app(settings=settings, loop=loop, store=store, guard=guard, api_token=TOKEN)
    try:
        with TestClient(app, headers=OPERATOR) as client:
            yield Controller(mesh, loop, guard, store, settings, client)
    finally:
        store.close()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` behind a real uvicorn server on 127.0.0.1 (a free port), in a daemon thread, as
    `meshpilot serve` runs it; yields the base URL and stops the server on exit."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it Nagle's algorithm and delayed ACKs add ~40 ms to every answer
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="api-under-test", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start within 10 s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
        sock.close()
