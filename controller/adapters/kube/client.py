"""The Kubernetes API client meshpilot uses, and what its errors mean to the control loop.

Why a module of its own: the Istio actuator and the Lease elector both talk to the API server
and must agree on how (credentials, connection pool, no retried reads against a hung server)
and on what a failure means. The loop only knows meshcore's errors: a missing object or API,
an RBAC denial (401/403) or a request the server rejects as invalid is `PermanentError`; 5xx,
429, timeouts and refused connections are `TemporaryError`. `translate_api_error` maps the
kubernetes/urllib3 error tree onto those two, with the API server's own message.
`ApiOwner` is what an adapter's helpers (the VirtualService watch cache, the DestinationRule
lookup) use of the adapter that owns them: its client, timeouts, error translation, counters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from meshcore import ConfigError, PermanentError, TemporaryError

__all__ = [
    "ApiOwner",
    "brief_error",
    "error_status",
    "kube_api_client",
    "status_message",
    "translate_api_error",
]

_T = TypeVar("_T")


class ApiOwner(Protocol):
    """What a helper of an adapter (a watch cache, a lookup) uses of the adapter that owns it:
    one client, one timeout policy, one error translation and one set of counters for all."""

    @property
    def custom_objects(self) -> Any:
        """A `kubernetes.client.CustomObjectsApi`."""

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts of a request, s."""

    def call(self, verb: str, resource: str, fn: Callable[[], _T]) -> _T:
        """fn() with errors translated, failing fast while the API server is unreachable."""

    def count(self, counter: str) -> None:
        """Add one to the counter `counter` (e.g. ``lists``, ``watch_events``, ``dr_lists``)."""


def kube_api_client(
    kubeconfig: str | None = None, *, context: str | None = None, max_connections: int = 16
) -> Any:
    """A `kubernetes.client.ApiClient` from a kubeconfig file, or in-cluster credentials.

    Refused connections are retried twice at once, reads never: urllib3's default (3 retries of
    any error) would turn one request timeout into four against a hung API server.
    max_connections: size of the connection pool, at least the number of threads that call
    the API server at once (parallel writers plus one per watch); beyond it urllib3 opens and
    throws away extra connections. Raises `ConfigError` when neither works (no file, no
    service-account token).
    """
    if max_connections < 1:
        raise ConfigError(f"max_connections must be >= 1, got {max_connections!r}")
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (ConfigException, OSError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
        raise ConfigError(f"cannot load Kubernetes credentials from {where}: {err}") from err
    configuration.retries = urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0)
    configuration.connection_pool_maxsize = max_connections
    return client.ApiClient(configuration)


def error_status(err: ApiException) -> dict[str, Any] | None:
    """The `Status` object of an error body, or None when the body is not one."""
    body = err.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str) or not body:
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return None
    return status if isinstance(status, dict) and status.get("kind") == "Status" else None


def status_message(err: ApiException) -> str:
    """The API server's own message from an error body (a `Status`), else the body or reason."""
    status = error_status(err)
    if status is not None and status.get("message"):
        return str(status["message"])
    body = err.body.decode(errors="replace") if isinstance(err.body, bytes) else err.body
    if isinstance(body, str) and body.strip():
        return " ".join(body.split())[:300]
    return str(err.reason or "no message")


def brief_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of `exc` on one line, cut to `limit` characters (for messages, logs)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def translate_api_error(
    exc: BaseException, verb: str, resource: str, *, not_found: str | None = None
) -> PermanentError | TemporaryError:
    """meshpilot's error for a failed Kubernetes call (the caller raises it ``from exc``).

    verb/resource: what was attempted, e.g. ``patch``, ``virtualservices.networking.istio.io
    ns/name``; not_found: the message for a 404 (default: ``<resource> not found``).
    """
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = status_message(exc)
        if status in (401, 403):
            return PermanentError(f"RBAC denied: {verb} {resource} ({status}: {message})")
        if status == 404:
            body = error_status(exc)
            if body is None or body.get("reason") != "NotFound":  # no such API at all
                return PermanentError(
                    f"{verb} {resource}: the API server does not serve this resource "
                    f"({message}); is its CRD installed?"
                )
            return PermanentError(not_found or f"{resource} not found")
        if status == 0 or status == 429 or status >= 500:
            return TemporaryError(f"{verb} {resource}: API server answered {status}: {message}")
        return PermanentError(f"{verb} {resource} rejected ({status}): {message}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return TemporaryError(f"{verb} {resource}: cannot reach the API server: {brief_error(exc)}")
    return TemporaryError(f"{verb} {resource}: unexpected {brief_error(exc)}")
