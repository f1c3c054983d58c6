"""Client of a lab backend's control endpoint (stdlib only): read its state, change a version's
parameters, reseed its generators, wait until it answers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from meshcore.errors import TemporaryError


class BackendControlError(TemporaryError):
    """The control endpoint refused a request (the message is its JSON error) or is down.

    A `TemporaryError`, so the command line reports it in one line: a backend that is down or
    still starting may answer on the next try, and a refusal says what to change.
    """


def _call(url: str, data: bytes | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("error", err.reason)
        except (ValueError, AttributeError):
            message = err.reason
        raise BackendControlError(f"{url}: {err.code} {message}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise BackendControlError(f"{url}: {err}") from err


def backend_state(control_url: str) -> dict[str, Any]:
    """`GET /state`: ``{"uptime_s", "services": {service: {subset: {params and counters}}}}``."""
    return _call(control_url.rstrip("/") + "/state")


def set_subset(
    control_url: str,
    service: str,
    subset: str,
    changes: Mapping[str, float],
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    """`POST /set`: move `changes` over `ramp_s` seconds; `BackendControlError` on refusal."""
    body = {"service": service, "subset": subset, "set": dict(changes), "ramp_s": ramp_s}
    return _call(control_url.rstrip("/") + "/set", json.dumps(body).encode())


def reseed(control_url: str, seed: int) -> dict[str, Any]:
    """`POST /reseed`: every replica draws from `seed` from now on, as if started with it."""
    return _call(control_url.rstrip("/") + "/reseed", json.dumps({"seed": seed}).encode())


def wait_backend_ready(control_url: str, timeout_s: float) -> None:
    """Poll `/healthz` until it answers; `BackendControlError` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            _call(control_url.rstrip("/") + "/healthz", timeout_s=1.0)
            return
        except BackendControlError as err:
            last = err
        if time.monotonic() >= deadline:
            raise BackendControlError(f"backend not ready after {timeout_s:g} s: {last}")
        time.sleep(0.05)
