"""The operator dashboard in a real browser: headless Chromium (Debian's) through Playwright,
against `meshpilot serve --mesh sim` as a real process on 127.0.0.1.

Cases: the page at ``/`` loads with no console error and no page error, and every request it
makes stays on the API's own origin; every managed route gets a card with its phase, the
weights the API reports, a chart and the last decisions; the operator enters the token (kept
in sessionStorage) and pins weights from the page with a reason; the HTTP API then shows the
pin active and written, and the audit log records the pinned split as written by this replica
in phase ``overridden``, and the operator's action with its reason and caller (``token``), which
the page lists as ``operator: pin by token``; the page shows the new phase; then a pause from
the page sends the reason typed there; a control with a wrong token shows the API's
401 on the page. A full-page screenshot is saved under ``runs/test-artifacts/`` and its path
printed.

Chromium is never downloaded: ``.ci/system-deps.sh`` installs Debian's package and the test
fails (not skips) without it. Waits poll with generous deadlines; nothing is timed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import fail, free_port, require_binary, tail

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "runs" / "test-artifacts"
STEADY = "lirmm-services/steady-80/default"
PINNED = {"v1": 62, "v2": 23, "v3": 15}
"""Off the proportional split (58/23/19) but close to it: the pin is written, overloads nothing."""
WAIT_S = 120.0
UI_TIMEOUT_MS = 20_000
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
"""Without the networking flags Chromium keeps trying hosts it cannot reach."""


def _env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHPILOT_")}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out["HOSTNAME"] = "dashboard-pod"
    return out


class Server:
    """A `meshpilot serve --mesh sim` process on 127.0.0.1 and an HTTP client to it."""

    def __init__(self, proc: subprocess.Popen[str], base_url: str, token: Path, log: Path):
        self.proc = proc
        self.base_url = base_url
        self.token_file = token
        self.log = log
        self.http = httpx.Client(base_url=base_url, timeout=5.0)

    def wait_for(self, what: str, probe: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(
                    f"meshpilot exited with {self.proc.returncode} waiting for {what}:\n"
                    f"{tail(self.log)}"
                )
            try:
                value = probe()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        fail(f"gave up waiting for {what}:\n{tail(self.log)}")

    def route(self, key: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/routes/{key}").json()
        return body


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    token_file = tmp_path / "api-token"  # created by serve, owner-only
    cmd = [
        sys.executable, "-m", "meshpilot.cli", "serve", "--mesh", "sim",
        "--port", str(port), "--tick-s", "0.5", "--speed", "10",
        "--db", str(tmp_path / "decisions.db"), "--policy", "proportional",
        "--token-file", str(token_file),
    ]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True
        )
    server = Server(proc, f"http://127.0.0.1:{port}", token_file, log_path)
    try:
        yield server
    finally:
        server.http.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = require_binary("chromium", "MESHPILOT_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        fail("playwright is not installed: pip install -e '.[dev]' (never `playwright install`)")
    args = [*CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


def card(page: Any, key: str) -> Any:
    """The route's section, found by its heading (the route key)."""
    heading = page.get_by_role("heading", name=key, exact=True)
    return page.locator("section.route", has=heading)


def expect_weights(section: Any, server: Server, key: str) -> None:
    """The card shows the weights the API reports (retried: the policy may move them)."""
    from playwright.sync_api import expect

    for _ in range(6):
        weights = server.route(key)["weights"]
        try:
            expect(section.locator("table.weights tbody th")).to_have_text(list(weights))
            expect(section.locator("table.weights td.num")).to_have_text(
                [str(v) for v in weights.values()], timeout=UI_TIMEOUT_MS
            )
            return
        except AssertionError:
            continue
    fail(f"the page never showed the API's weights of {key}")


def test_the_dashboard_shows_routes_and_pins_weights_from_the_page(
    server: Server, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)  # the page refreshes every 5 s
    server.wait_for("/readyz", lambda: server.http.get("/readyz").status_code == 200)
    routes = server.wait_for(
        "every route active with weights (past the first ticks without data)",
        lambda: (
            (rs := server.http.get("/routes").json())
            and all(r["weights"] and r["phase"] == "active" for r in rs)
            and rs
        ),
    )
    keys = [r["key"] for r in routes]
    assert STEADY in keys
    token = server.token_file.read_text().strip()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: console.append(f"page error: {err}"))
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))

    page.goto(server.base_url + "/")
    expect(page).to_have_title("meshpilot — operator dashboard")
    for key in keys:
        section = card(page, key)
        expect(section).to_be_visible()
        expect(section.locator(".phase")).to_have_text("active")
        expect_weights(section, server, key)
        series = section.locator("figure.chart svg path.series")
        expect(series).not_to_have_count(0)  # one line per subset and panel
        expect(section.locator("figure.chart svg")).to_have_attribute("role", "img")
        expect(section.locator("table.decisions tbody tr").first).not_to_have_text(
            "no decision yet"
        )
    assert console == [], console

    page.get_by_label("Bearer token").fill(token)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-state")).to_have_text("token set for this tab")
    assert page.evaluate("sessionStorage.getItem('meshpilot.token')") == token

    steady = card(page, STEADY)
    for subset, points in PINNED.items():
        steady.get_by_label(f"{subset} (points)").fill(str(points))
    steady.get_by_label("TTL (s)").fill("600")
    reason = steady.get_by_label("Reason")
    expect(reason).to_be_enabled()
    reason.fill("dashboard browser test")
    steady.get_by_role("button", name="Pin weights").click()
    expect(steady.locator("p.result")).to_contain_text("pinned v1 62 / v2 23 / v3 15")

    active = server.wait_for(
        "the pin to be active and written",
        lambda: (
            (r := server.route(STEADY))["phase"] == "overridden"
            and r["weights"] == PINNED
            and r["controls"]["pin"] == PINNED
            and r
        ),
    )
    assert active["controls"]["pin_until_s"] is not None
    audit = server.wait_for(
        "the audit log to record the pin",
        lambda: [
            d
            for d in server.http.get("/decisions", params={"route": STEADY, "limit": 200}).json()
            if d["phase"] == "overridden" and d["wrote"] and d["written"] == PINNED
        ],
    )
    assert audit[-1]["writer"] == "dashboard-pod"
    assert "pinned until" in audit[-1]["reason"]
    operators = server.http.get("/decisions", params={"route": STEADY, "operators": "true"}).json()
    (action,) = [a for a in operators if a["action"] == "pin"]
    assert (action["caller"], action["reason"]) == ("token", "dashboard browser test")
    assert action["written"] == PINNED
    expect(steady.locator("table.decisions")).to_contain_text("operator: pin by token")
    expect(steady.locator(".phase")).to_have_text("overridden")
    expect(steady.locator("table.decisions")).to_contain_text("pinned until")
    assert console == [], console

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    with capsys.disabled():
        print(f"\ndashboard screenshot: {shot}")

    reason.fill("freeze from the dashboard")
    steady.get_by_role("button", name="Pause").click()
    expect(steady.locator(".phase")).to_have_text("paused")
    paused = server.http.get("/decisions", params={"route": STEADY, "operators": "true"}).json()
    assert paused[0]["action"] == "pause" and paused[0]["reason"] == "freeze from the dashboard"
    steady.get_by_role("button", name="Resume").click()
    expect(steady.locator(".phase")).not_to_have_text("paused")

    page.evaluate("sessionStorage.setItem('meshpilot.token', 'a-wrong-token-of-enough-length')")
    steady.get_by_role("button", name="Pause").click()
    expect(steady.locator("p.result")).to_contain_text("401")
    assert not server.route(STEADY)["controls"]["paused"]
    assert all(" 401 " in text or "401" in text for text in console), console

    origin = server.base_url + "/"
    assert requested and all(url.startswith(origin) for url in requested), requested
