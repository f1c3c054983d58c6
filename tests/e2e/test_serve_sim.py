"""`meshpilot serve --mesh sim` as a real process on 127.0.0.1, driven only through HTTP.

Cases: the process becomes ready; decisions are recorded and the policy moves the
degraded-canary route off its 90/10 start; an override without the bearer token is a 401;
with the token serve created in its token file, the override is written and shown as
``overridden`` with the pinned weights; SIGTERM stops it gracefully with exit code 0, and the
audit log it leaves shows this replica as the only writer. Restarted with the same store file,
a pin and a pause made before (with their reasons) are still in effect — the pin written again
to the fresh simulated mesh, the paused route paused — and the audit history of the first run
is intact, with who did what and why, plus one ``restore`` record per route. Also: every
`serve` option has help text, and the serving path never imports torch.

Waits poll with generous deadlines (numba may compile the simulator kernel on a cold cache);
nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.store import DecisionStore
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
CANARY = "lirmm-services/degraded-canary/default"
STEADY = "lirmm-services/steady-80/default"
WAIT_S = 120.0


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHPILOT_")}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out["HOSTNAME"] = "e2e-pod"
    return out


def wait_for(what: str, probe: Callable[[], Any], proc: subprocess.Popen[str]) -> Any:
    """Poll `probe` until it returns something truthy; fail with `what` if the process dies."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"meshpilot exited with {proc.returncode} while waiting for {what}")
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up waiting for {what}")


def launch(tmp_path: Path, port: int, log_name: str = "serve.log") -> subprocess.Popen[str]:
    """`meshpilot serve --mesh sim` on `port`, with its store and token file in `tmp_path`."""
    cmd = [
        sys.executable,
        "-m",
        "meshpilot.cli",
        "serve",
        "--mesh",
        "sim",
        "--port",
        str(port),
        "--tick-s",
        "0.5",
        "--speed",
        "10",
        "--db",
        str(tmp_path / "decisions.db"),
        "--policy",
        "proportional",
        "--token-file",
        str(tmp_path / "api-token"),  # created by serve: it must exist before any control
    ]
    with (tmp_path / log_name).open("w") as log:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], httpx.Client, Path]]:
    port = free_port()
    db = tmp_path / "decisions.db"
    proc = launch(tmp_path, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        yield proc, client, db
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def route(client: httpx.Client, key: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/routes/{key}").json()
    return body


def test_serve_sim_decides_accepts_an_override_and_stops_on_sigterm(
    server: tuple[subprocess.Popen[str], httpx.Client, Path], tmp_path: Path
) -> None:
    proc, client, db = server
    wait_for("/readyz", lambda: client.get("/readyz").status_code == 200, proc)
    assert client.get("/readyz").json()["leader"] is True

    decisions = wait_for("decisions", lambda: client.get("/decisions").json(), proc)
    assert {d["writer"] for d in decisions} == {"e2e-pod"}

    wait_for(
        "the policy to move degraded-canary",
        lambda: route(client, CANARY)["weights"] not in (None, {"stable": 90, "canary": 10}),
        proc,
    )
    assert route(client, CANARY)["last_decision"]["policy"] == "proportional+supervisor"

    pinned = {"v1": 10, "v2": 10, "v3": 80}
    body = {"weights": pinned, "ttl_s": 600}
    anonymous = client.post(f"/routes/{STEADY}/override", json=body)
    assert anonymous.status_code == 401, anonymous.text
    token = (tmp_path / "api-token").read_text().strip()
    operator = {"Authorization": f"Bearer {token}"}
    response = client.post(f"/routes/{STEADY}/override", json=body, headers=operator)
    assert response.status_code == 200, response.text
    wait_for(
        "the override to be written",
        lambda: (r := route(client, STEADY))["phase"] == "overridden" and r["weights"] == pinned,
        proc,
    )

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "meshpilot stopped" in log
    with DecisionStore(db) as store:
        assert set(store.writers()) == {"e2e-pod"}
        assert any(r.written == pinned for r in store.latest(STEADY, limit=1000) if r.wrote)


def test_pins_pauses_and_the_audit_log_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
    pinned = {"v1": 10, "v2": 10, "v3": 80}
    procs = [launch(tmp_path, port, "first.log")]
    try:
        first = procs[0]
        wait_for("/readyz", lambda: client.get("/readyz").status_code == 200, first)
        token = (tmp_path / "api-token").read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        body = {"weights": pinned, "ttl_s": 3600, "reason": "canary v3 only, INC-9"}
        assert client.post(f"/routes/{STEADY}/override", json=body).status_code == 200
        paused = client.post(f"/routes/{CANARY}/pause", json={"reason": "freeze"})
        assert paused.status_code == 200, paused.text
        wait_for(
            "the pin to be written",
            lambda: (
                (r := route(client, STEADY))["phase"] == "overridden" and r["weights"] == pinned
            ),
            first,
        )
        before = client.get("/decisions", params={"limit": 1000}).json()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0

        procs.append(launch(tmp_path, port, "second.log"))
        second = procs[1]
        wait_for("/readyz again", lambda: client.get("/readyz").status_code == 200, second)
        steady = wait_for(
            "the restored pin to be written to the new mesh",
            lambda: (
                (r := route(client, STEADY))["phase"] == "overridden"
                and r["weights"] == pinned
                and r
            ),
            second,
        )
        assert steady["controls"]["pin"] == pinned
        canary = route(client, CANARY)
        assert canary["controls"]["paused"] and canary["phase"] == "paused"
        actions = client.get("/decisions", params={"operators": "true"}).json()
        kept = {(a["action"], a["route"], a["caller"], a["reason"]) for a in actions}
        assert ("pin", STEADY, "token", "canary v3 only, INC-9") in kept
        assert ("pause", CANARY, "token", "freeze") in kept
        assert {(a["route"], a["caller"]) for a in actions if a["action"] == "restore"} == {
            (STEADY, "meshpilot"),
            (CANARY, "meshpilot"),
        }
        oldest = min(before, key=lambda d: d["id"])
        assert client.get(f"/decisions/{oldest['id']}").json() == oldest
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    finally:
        client.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_every_serve_option_has_help_text() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "meshpilot.cli", "serve", "--help"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--mesh", "--config", "--port", "--policy", "--tick-s", "--speed", "--db"):
        assert option in out, option
    assert "simulated seconds per wall second" in out


def test_the_serving_path_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import meshpilot.commands.serve as serve\n"
        "import controller.api.app, envs.simulator.realtime, controller.loop\n"
        "serve.resolve_policy(None)\n"
        "serve.resolve_policy('proportional')\n"
        "heavy = ('torch', 'stable_baselines3')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), check=True)
