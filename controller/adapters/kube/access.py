"""`KubernetesAccess`: who is the bearer of a control, and may they; asked of the API server.

Why: in a cluster the people (and ServiceAccounts) who may steer traffic are already
described by RBAC; a second list of secrets for the API would drift from it. A TokenReview
turns the bearer token into a user (name, uid, groups, extra), a SubjectAccessReview asks
whether that user may ``patch`` ``managedroutes.meshpilot.io`` in the route's namespace
(`controller.access`). The controller's own identity needs ``create`` on tokenreviews and
subjectaccessreviews (the ``system:auth-delegator`` ClusterRole).

Answers are cached for `cache_s` (a token by its SHA-256, a verdict by user and namespace),
denials included. Errors: a refused or failed review (the API server unreachable, 5xx, or the
controller not allowed to ask) raises `TemporaryError` or `PermanentError` from the kubernetes
error; the API answers 503 and lets nothing through.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.access import (
    CONTROL_GROUP,
    CONTROL_RESOURCE,
    CONTROL_VERB,
    Caller,
    TtlCache,
)
from controller.adapters.kube.client import kube_api_client, translate_api_error
from meshcore import ConfigError

__all__ = ["KubernetesAccess"]

_log = logging.getLogger(__name__)


class KubernetesAccess:
    """An `controller.access.Authenticator` backed by TokenReview and SubjectAccessReview.

    api_client: a `kubernetes.client.ApiClient` (default: one from `kubeconfig` and `context`,
    or in-cluster credentials); cache_s: how long an answer is reused (s, default 10; 0 asks
    every time); timeout_s: per-request timeout (s); audiences: the token audiences to accept
    (default None: the API server's own).
    """

    mode = "kubernetes"

    def __init__(
        self,
        *,
        api_client: Any | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        cache_s: float = 10.0,
        timeout_s: float = 5.0,
        audiences: list[str] | None = None,
    ) -> None:
        if not cache_s >= 0:
            raise ConfigError(f"cache_s must be >= 0 s, got {cache_s!r}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0 s, got {timeout_s!r}")
        self._owns_client = api_client is None
        self.api_client = (
            api_client
            if api_client is not None
            else kube_api_client(kubeconfig, context=context, max_connections=4)
        )
        self.authn: Any = client.AuthenticationV1Api(self.api_client)
        self.authz: Any = client.AuthorizationV1Api(self.api_client)
        self.timeouts = (min(float(timeout_s), 3.0), float(timeout_s))
        self.audiences = list(audiences) if audiences else None
        self._callers: TtlCache[Caller | None] = TtlCache(cache_s)
        self._verdicts: TtlCache[str | None] = TtlCache(cache_s)
        self.token_reviews = 0
        self.access_reviews = 0

    def close(self) -> None:
        """Release the connection pool (only when this object built the client)."""
        if self._owns_client:
            self.api_client.close()

    def authenticate(self, token: str) -> Caller | None:
        if not token:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep the token itself
        found, cached = self._callers.get(key)
        if found:
            return cached
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        self.token_reviews += 1
        answer = self._create(
            "tokenreviews.authentication.k8s.io", self.authn.create_token_review, body
        )
        status = answer.get("status") or {}
        caller: Caller | None = None
        if status.get("authenticated"):
            user = status.get("user") or {}
            caller = Caller(
                name=str(user.get("username", "")),
                groups=tuple(str(g) for g in user.get("groups") or ()),
                uid=str(user.get("uid", "")),
                extra={
                    str(k): tuple(str(v) for v in vs or ())
                    for k, vs in (user.get("extra") or {}).items()
                },
            )
            if not caller.name:
                caller = None
        elif status.get("error"):
            _log.info("token review refused a bearer: %s", status["error"])
        self._callers.put(key, caller)
        return caller

    def authorize(self, caller: Caller, namespace: str) -> str | None:
        key = (caller.name, caller.uid, caller.groups, namespace)
        found, cached = self._verdicts.get(key)
        if found:
            return cached
        spec: dict[str, Any] = {
            "user": caller.name,
            "groups": list(caller.groups),
            "resourceAttributes": {
                "group": CONTROL_GROUP,
                "resource": CONTROL_RESOURCE,
                "verb": CONTROL_VERB,
                "namespace": namespace,
            },
        }
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = {k: list(v) for k, v in caller.extra.items()}
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        self.access_reviews += 1
        answer = self._create(
            "subjectaccessreviews.authorization.k8s.io",
            self.authz.create_subject_access_review,
            body,
        )
        status = answer.get("status") or {}
        verdict: str | None = None
        if not status.get("allowed") or status.get("denied"):
            why = status.get("reason") or status.get("evaluationError") or "no RBAC rule allows it"
            verdict = (
                f"{caller.name} may not {CONTROL_VERB} {CONTROL_RESOURCE}.{CONTROL_GROUP} in "
                f"namespace {namespace} ({why})"
            )
        self._verdicts.put(key, verdict)
        return verdict

    def _create(
        self, resource: str, create: Callable[..., Any], body: dict[str, Any]
    ) -> dict[str, Any]:
        """POST one review; its answer as a dict, or meshcore's error from the kubernetes one."""
        try:
            response = create(body, _preload_content=False, _request_timeout=self.timeouts)
            answer: dict[str, Any] = json.loads(response.data)
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise translate_api_error(exc, "create", resource) from exc
        return answer
