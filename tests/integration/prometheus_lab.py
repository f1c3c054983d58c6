"""A throwaway real Prometheus on 127.0.0.1 for integration tests and the lab.

Uses Debian's ``prometheus`` binary (``apt-get install --no-install-recommends prometheus``),
started by us (never the packaged systemd unit) with a temp config and TSDB directory, a free
port, ``--web.enable-lifecycle`` and a 1 s scrape interval for the given ``host:port`` targets.

``/-/ready`` answers long before the first scrape lands, so `start` waits for a real sample of
every target (an ``up`` sample newer than the process start), and `wait_for_sample` waits for a
query to return data. `kill` + `restart` simulate an outage: the TSDB directory and port are
kept, so data scraped before the outage is still queryable afterwards.

Only the standard library here (and ``tests/helpers.py``), so the lab also runs outside pytest
(``bench/tick_latency.py``). Tests get the binary from the ``prometheus_bin`` fixture
(``tests/conftest.py``), which fails with the fix when it is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers import free_port, tail


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` binary ($MESHPILOT_PROMETHEUS or PATH), or None."""
    env = os.environ.get("MESHPILOT_PROMETHEUS")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("prometheus")


class PrometheusLab:
    """One Prometheus process scraping `targets` (``"127.0.0.1:PORT"``) every `scrape_interval_s`,
    evaluating `rules` (rule-file documents, as dicts) at the same interval.

    Use as a context manager or call `start`/`stop`. `url` is the base URL for clients.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        binary: str | None = None,
        scrape_interval_s: float = 1.0,
        job: str = "meshpilot-lab",
        rules: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.targets = list(targets)
        self.rules = list(rules)
        self.binary = binary or prometheus_binary() or "prometheus"
        self.scrape_interval_s = scrape_interval_s
        self.job = job
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="meshpilot-prom-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "prometheus.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> PrometheusLab:
        """Start and wait until every target has been scraped once by this process."""
        if self.running:
            raise RuntimeError("prometheus already running")
        started_s = time.time()
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self._dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready(timeout_s)
            if self.targets:
                # One fresh `up` sample per target proves a scrape by *this* process.
                self.wait_for_sample(
                    f'count(timestamp(up{{job="{self.job}"}}) > {started_s:.3f}) '
                    f">= {len(self.targets)}",
                    timeout_s=timeout_s,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after 10 s); keeps the data directory."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout=10)

    def kill(self) -> None:
        """Crash it (SIGKILL): clients now get connection refused on `url`."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, timeout_s: float = 30.0) -> PrometheusLab:
        """Start again on the same port and TSDB directory (after `kill` or `stop`)."""
        if self.running:
            self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        """Stop and delete the temp directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PrometheusLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, promql: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (raises on HTTP or API errors)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_sample(self, promql: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll until `promql` returns at least one series; returns it (TimeoutError + log)."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self._proc.returncode}):\n{self._tail()}")
            try:
                result = self.query(promql)
                if result:
                    return result
            except (OSError, RuntimeError) as exc:
                last_error = exc
            time.sleep(0.2)
        raise TimeoutError(
            f"no sample for {promql!r} within {timeout_s} s (last error: {last_error})\n"
            f"{self._tail()}"
        )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited during start:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready within {timeout_s} s:\n{self._tail()}")

    def _write_config(self) -> None:
        interval = f"{round(self.scrape_interval_s * 1000)}ms"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        rule_files = []
        for i, document in enumerate(self.rules):
            path = self._dir / f"rules-{i}.yml"
            path.write_text(json.dumps(document, indent=2))
            rule_files.append(str(path))
        if rule_files:
            config["rule_files"] = rule_files
        # JSON is valid YAML, so no YAML library is needed.
        (self._dir / "prometheus.yml").write_text(json.dumps(config, indent=2))

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _tail(self, n: int = 30) -> str:
        return tail(self.log_path, n)
