"""`VirtualServiceActuator` against a real kube-apiserver v1.20.2 with Istio's CRDs and RBAC.

Cases:

* round trip: `current` by route name and by index, short host vs FQDN; `apply` changes the
  managed weights and nothing else (matches, retries, mirror, the other route, other
  annotations stay byte-identical), adds the managed-routes annotation once (JSON pointer
  escaping, annotations map absent or present), `add`s an absent weight, sends nothing when
  the weights are already in force; `discover` returns the route's subsets; `apply` right
  after `current` patches from that read (one GET); a stale copy is re-read (after a failed
  patch, or before concluding that nothing needs writing);
  credentials from a kubeconfig file, or a clear error outside a cluster;
* a foreign writer thread edits the same VirtualService 100 times (another route's weights, the
  managed route's retry policy, new matches, annotations; by JSON Patch and by GET+PUT) while
  meshpilot writes ~100 times: every state in the object's watch history has managed weights
  summing to 100, no foreign edit is ever lost, conflicts are retried (counts printed);
  (run with the watch cache off and on);
* watch cache: one LIST, then `current` and `apply` without a GET; it follows foreign edits,
  deletions and new objects through the watch; a stale cache (events withheld) still never
  loses a foreign edit (the resourceVersion test fails, one GET, retry); after 410 Gone (a
  watch from a compacted resourceVersion) it lists again; without list/watch permission
  every read falls back to a GET; threads reading at once share one DestinationRule list;
* persistent conflicts -> `TemporaryError` after ``max_conflict_retries`` re-reads;
* least privilege: the Role in manifests/base/role.yaml is enough (and no more); without
  ``patch`` -> `PermanentError` "RBAC denied: patch ..."; without any role -> "RBAC denied: get";
* missing VirtualService / route / host / DestinationRule / subsets -> `PermanentError` each
  with a message naming what is missing;
* weights someone else set to a sum != 100 -> `current` raises `PermanentError` (decision:
  never renormalize a human's intent; the loop marks the route failed and re-checks it), while
  `apply` of valid weights repairs the route;
* weights outside 0..100 cannot even be built, and `apply` refuses anything but `Weights`;
* ``dry_run`` answers with the new weights but leaves the object unchanged;
* the API server hung (SIGSTOP) -> one call waits for the timeout, the next ones fail fast with
  `TemporaryError` (a tick over many routes is not stalled once per route); then it recovers;
* the API server killed mid-run -> `TemporaryError` only (no crash); after a restart it works
  (with the watch cache: it drops out of sync during the outage and lists again after).

Fails with the fix (`make system-deps`) when the kube-apiserver/etcd binaries are not built.
"""

from __future__ import annotations

import copy
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_lab import CONTROLLER_USER, ROLE_FILE, KubeLab, running_lab

from controller.adapters.istio.actuator import VirtualServiceActuator
from controller.adapters.istio.routes import MANAGED_ANNOTATION
from controller.adapters.istio.watch_cache import VirtualServiceCache, WatchExpired
from meshcore import PermanentError, RouteRef, TemporaryError, Weights

pytestmark = pytest.mark.integration

NS = "lirmm-services"
GROUP, VERSION = "networking.istio.io", "v1"
FQDN = f"reviews.{NS}.svc.cluster.local"


# -- lab ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[KubeLab]:
    from kubernetes import client

    for kl in running_lab():
        core: Any = client.CoreV1Api(kl.api_client("admin"))
        core.create_namespace({"metadata": {"name": NS}})
        yield kl


@pytest.fixture(scope="module")
def admin(lab: KubeLab) -> Any:
    return lab.api_client("admin")


def custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def impersonating(lab: KubeLab, user: str) -> Any:
    """An admin client that acts as `user` (no groups): RBAC applies to `user` alone."""
    api = lab.api_client("admin")
    api.set_default_header("Impersonate-User", user)
    return api


def bind(admin: Any, role: dict[str, Any], user: str) -> None:
    """Create `role` in NS (if new) and bind it to `user`."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    rbac: Any = client.RbacAuthorizationV1Api(admin)
    name = role["metadata"]["name"]
    try:
        rbac.create_namespaced_role(NS, role)
    except ApiException as e:
        if e.status != 409:
            raise
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": f"{name}-{user}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )


def eventually(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """fn() once it stops raising (the RBAC authorizer reads from an informer cache)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def manifest_role() -> dict[str, Any]:
    role = yaml.safe_load(ROLE_FILE.read_text())
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == NS
    return role


@pytest.fixture(scope="module")
def controller_api(lab: KubeLab, admin: Any) -> Any:
    """The least-privilege controller user (its own token) bound to the manifests' Role."""
    bind(admin, manifest_role(), CONTROLLER_USER)
    return lab.api_client("controller")


# -- objects ------------------------------------------------------------------------------------


def destination_rule(name: str, host: str, subsets: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host}
    if subsets is not None:
        spec["subsets"] = [{"name": s, "labels": {"version": s}} for s in subsets]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def virtual_service(name: str, host: str = "reviews", **meta: Any) -> dict[str, Any]:
    """Two http routes: `canary` (match, retries, mirror; by header to v3) and `primary`."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS, **meta},
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "name": "canary",
                    "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                    "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"},
                    "mirror": {"host": "ratings", "subset": "v1"},
                    "mirrorPercentage": {"value": 10.0},
                    "route": [
                        {"destination": {"host": host, "subset": "v3"}, "weight": 60},
                        {"destination": {"host": host, "subset": "v2"}, "weight": 40},
                    ],
                },
                {
                    "name": "primary",
                    "timeout": "10s",
                    "route": [
                        {"destination": {"host": host, "subset": "v1"}, "weight": 80},
                        {"destination": {"host": host, "subset": "v2"}, "weight": 15},
                        {"destination": {"host": host, "subset": "v3"}, "weight": 5},
                    ],
                },
            ],
        },
    }


_seq = iter(range(10_000))


def create(admin: Any, obj: dict[str, Any]) -> dict[str, Any]:
    plural = "virtualservices" if obj["kind"] == "VirtualService" else "destinationrules"
    return custom(admin).create_namespaced_custom_object(GROUP, VERSION, NS, plural, obj)


def get_vs(admin: Any, name: str) -> dict[str, Any]:
    return custom(admin).get_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", name)


@pytest.fixture(scope="module")
def reviews_dr(admin: Any) -> dict[str, Any]:
    return create(admin, destination_rule("reviews", FQDN, ["v1", "v2", "v3"]))


@pytest.fixture
def vs_name(admin: Any, reviews_dr: dict[str, Any]) -> str:
    """A fresh two-route VirtualService for host `reviews` (short name)."""
    name = f"reviews-{next(_seq)}"
    create(admin, virtual_service(name))
    return name


def weights_of(obj: dict[str, Any], http_index: int) -> dict[str, int]:
    return {
        r["destination"]["subset"]: r["weight"] for r in obj["spec"]["http"][http_index]["route"]
    }


def without_weights_and_meta(obj: dict[str, Any], http_index: int) -> dict[str, Any]:
    """The object minus what a meshpilot write may change (managed weights, rv, our
    annotation, managedFields, generation)."""
    out = copy.deepcopy(obj)
    for r in out["spec"]["http"][http_index]["route"]:
        r.pop("weight", None)
    meta = out["metadata"]
    for key in ("resourceVersion", "managedFields", "generation"):
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    annotations.pop(MANAGED_ANNOTATION, None)
    if not annotations:
        meta.pop("annotations", None)
    return out


def actuator(api: Any, **kw: Any) -> VirtualServiceActuator:
    return VirtualServiceActuator(api_client=api, dr_cache_s=0.0, **kw)


# -- round trip ----------------------------------------------------------------------------------


def test_current_reads_route_by_name_and_index_short_host_or_fqdn(admin: Any, vs_name: str) -> None:
    act = actuator(admin)
    by_name = act.current(RouteRef(NS, vs_name, "primary", FQDN))
    assert by_name.as_dict() == {"v1": 80, "v2": 15, "v3": 5}
    assert by_name.subsets == ("v1", "v2", "v3")  # route order
    assert act.current(RouteRef(NS, vs_name, 1, "reviews")) == by_name
    assert act.current(RouteRef(NS, vs_name, 1, f"reviews.{NS}")) == by_name
    assert act.current(RouteRef(NS, vs_name, 0, "reviews")).as_dict() == {"v3": 60, "v2": 40}
    assert act.discover(RouteRef(NS, vs_name, "primary", FQDN)) == ("v1", "v2", "v3")
    assert act.writes == 0


def test_apply_changes_only_the_managed_weights(admin: Any, vs_name: str) -> None:
    act = actuator(admin)
    route = RouteRef(NS, vs_name, "primary", FQDN)
    before = get_vs(admin, vs_name)
    assert "annotations" not in before["metadata"]  # the map is created by the first write

    written = act.apply(route, Weights(["v3", "v1", "v2"], [10, 60, 30]))
    assert written.as_dict() == {"v1": 60, "v2": 30, "v3": 10}
    after = get_vs(admin, vs_name)
    assert weights_of(after, 1) == {"v1": 60, "v2": 30, "v3": 10}
    assert act.current(route) == written
    assert without_weights_and_meta(after, 1) == without_weights_and_meta(before, 1)
    assert after["spec"]["http"][0] == before["spec"]["http"][0]  # match, retries, mirror
    assert after["metadata"]["annotations"] == {MANAGED_ANNOTATION: "primary"}
    managers = {m["manager"] for m in after["metadata"]["managedFields"]}
    assert "meshpilot" in managers
    assert act.writes == 1

    # Same weights again: nothing is sent, the object does not move.
    act.apply(route, written)
    assert act.writes == 1
    assert (
        get_vs(admin, vs_name)["metadata"]["resourceVersion"]
        == (after["metadata"]["resourceVersion"])
    )

    # A second managed route (by index) joins the annotation; other annotations survive.
    custom(admin).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        vs_name,
        {"metadata": {"annotations": {"team.example/owner": "shop", "note": "hands off"}}},
    )
    act.apply(RouteRef(NS, vs_name, 0, "reviews"), Weights(["v3", "v2"], [0, 100]))
    final = get_vs(admin, vs_name)
    assert final["metadata"]["annotations"] == {
        MANAGED_ANNOTATION: "0,primary",
        "team.example/owner": "shop",
        "note": "hands off",
    }
    assert weights_of(final, 0) == {"v3": 0, "v2": 100}
    assert weights_of(final, 1) == {"v1": 60, "v2": 30, "v3": 10}
    assert final["spec"]["http"][0]["retries"] == before["spec"]["http"][0]["retries"]
    assert final["spec"]["http"][0]["mirror"] == before["spec"]["http"][0]["mirror"]


def test_absent_weights_are_added_and_lone_destination_reads_100(admin: Any) -> None:
    name = f"reviews-{next(_seq)}"
    vs = virtual_service(name)
    del vs["spec"]["http"][1]["route"][0]["weight"]  # v1: absent means 0 in a split
    vs["spec"]["http"][1]["route"][1]["weight"] = 95
    vs["spec"]["http"][0]["route"] = [{"destination": {"host": "reviews", "subset": "v3"}}]
    create(admin, vs)
    act = actuator(admin, annotate=False)
    assert act.current(RouteRef(NS, name, 0, "reviews")).as_dict() == {"v3": 100}
    route = RouteRef(NS, name, "primary", "reviews")
    assert act.current(route).as_dict() == {"v1": 0, "v2": 95, "v3": 5}
    act.apply(route, Weights(["v1", "v2", "v3"], [50, 45, 5]))
    obj = get_vs(admin, name)
    assert weights_of(obj, 1) == {"v1": 50, "v2": 45, "v3": 5}
    assert "annotations" not in obj["metadata"]  # annotate=False


def test_apply_reuses_the_read_of_current_and_a_stale_copy_is_just_retried(
    admin: Any, vs_name: str
) -> None:
    act = actuator(admin)
    route = RouteRef(NS, vs_name, "primary", "reviews")
    act.current(route)
    act.apply(route, Weights(["v1", "v2", "v3"], [50, 25, 25]))
    assert (act.reads, act.writes, act.conflicts) == (1, 1, 0)  # one GET for both
    # The reused read says the weights are in force, but someone changed them since: checked.
    in_force = act.current(route)
    custom(admin).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        vs_name,
        [{"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 10}],
        _content_type="application/json-patch+json",
    )
    assert act.apply(route, in_force) == in_force
    assert weights_of(get_vs(admin, vs_name), 1) == in_force.as_dict()
    assert (act.reads, act.writes, act.conflicts) == (3, 2, 0)
    act.current(route)
    custom(admin).patch_namespaced_custom_object(  # someone writes in between
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        vs_name,
        {"spec": {"http": [{"name": "canary", "route": [{"destination": {"host": "x"}}]}]}},
    )
    with pytest.raises(PermanentError, match="no http route named 'primary'"):
        act.apply(route, Weights(["v1", "v2", "v3"], [40, 30, 30]))  # re-read: route is gone
    assert (act.reads, act.writes, act.conflicts) == (5, 2, 1)


def test_credentials_from_kubeconfig_or_in_cluster(
    lab: KubeLab, vs_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshcore import ConfigError

    act = VirtualServiceActuator(kubeconfig=str(lab.kubeconfig("admin")))
    assert act.current(RouteRef(NS, vs_name, "primary", "reviews"))["v1"] == 80
    act.close()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="in-cluster service account"):
        VirtualServiceActuator()
    with pytest.raises(ConfigError, match="dry_run must be"):
        VirtualServiceActuator(api_client=object(), dry_run="Yes")  # type: ignore[arg-type]


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("watch_cache", [False, True], ids=["get", "watch-cache"])
def test_concurrent_foreign_writer_loses_nothing_and_sums_stay_100(
    admin: Any, vs_name: str, capsys: pytest.CaptureFixture[str], watch_cache: bool
) -> None:
    """meshpilot and a foreign writer hammer one object; the watch history is the proof.

    With the watch cache, `apply` patches from the cached copy, which the foreign writer keeps
    making stale: only the resourceVersion test stands between it and a lost edit.
    """
    from kubernetes import client, watch
    from kubernetes.client.rest import ApiException

    co = custom(admin)
    foreign_api = client.CustomObjectsApi(admin)
    start_rv = get_vs(admin, vs_name)["metadata"]["resourceVersion"]
    route = RouteRef(NS, vs_name, "primary", "reviews")
    act = actuator(admin, watch_cache=watch_cache)  # defaults: 5 retries
    if watch_cache:
        assert act.cache_synced(NS, timeout_s=10)
    n_foreign, n_ours = 100, 100
    foreign_log: list[tuple[str, Any]] = []  # (kind, value) of every foreign edit that landed
    ours_ok: list[Weights] = []
    ours_temporary: list[str] = []
    foreign_conflicts = 0
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def foreign() -> None:
        nonlocal foreign_conflicts
        go.wait()
        for i in range(n_foreign):
            kind = ("other-weights", "retries", "match", "annotation")[i % 4]
            while True:
                try:
                    if kind == "other-weights":  # blind JSON Patch on the *other* route
                        k = (i * 7) % 101
                        foreign_api.patch_namespaced_custom_object(
                            GROUP,
                            VERSION,
                            NS,
                            "virtualservices",
                            vs_name,
                            [
                                {
                                    "op": "replace",
                                    "path": "/spec/http/0/route/0/weight",
                                    "value": k,
                                },
                                {
                                    "op": "replace",
                                    "path": "/spec/http/0/route/1/weight",
                                    "value": 100 - k,
                                },
                            ],
                            _content_type="application/json-patch+json",
                        )
                        foreign_log.append((kind, (k, 100 - k)))
                    elif kind == "retries":  # GET + PUT of the whole object, with its rv
                        obj = get_vs(admin, vs_name)
                        obj["spec"]["http"][1]["retries"] = {"attempts": i, "perTryTimeout": "1s"}
                        foreign_api.replace_namespaced_custom_object(
                            GROUP, VERSION, NS, "virtualservices", vs_name, obj
                        )
                        foreign_log.append((kind, i))
                    elif kind == "match":  # append a match to the managed route
                        foreign_api.patch_namespaced_custom_object(
                            GROUP,
                            VERSION,
                            NS,
                            "virtualservices",
                            vs_name,
                            [
                                {
                                    "op": "add",
                                    "path": "/spec/http/1/match"
                                    if i == 2
                                    else "/spec/http/1/match/-",
                                    "value": [{"uri": {"prefix": f"/edit-{i}"}}]
                                    if i == 2
                                    else {"uri": {"prefix": f"/edit-{i}"}},
                                }
                            ],
                            _content_type="application/json-patch+json",
                        )
                        foreign_log.append((kind, f"/edit-{i}"))
                    else:  # merge patch on metadata only
                        foreign_api.patch_namespaced_custom_object(
                            GROUP,
                            VERSION,
                            NS,
                            "virtualservices",
                            vs_name,
                            {"metadata": {"annotations": {f"foreign.example/edit-{i}": str(i)}}},
                        )
                        foreign_log.append((kind, f"foreign.example/edit-{i}"))
                    break
                except ApiException as e:
                    if e.status != 409:
                        errors.append(e)
                        return
                    foreign_conflicts += 1

    def ours() -> None:
        rng = random.Random(7)
        go.wait()
        for _ in range(n_ours):
            v1 = rng.randint(0, 100)
            v2 = rng.randint(0, 100 - v1)
            target = Weights(["v1", "v2", "v3"], [v1, v2, 100 - v1 - v2])
            try:
                ours_ok.append(act.apply(route, target))
            except TemporaryError as e:
                ours_temporary.append(str(e))
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=foreign), threading.Thread(target=ours)]
    started = time.monotonic()
    for t in threads:
        t.start()
    durations = []
    for t in threads:
        t.join(300)
        durations.append(time.monotonic() - started)
    assert not errors, errors
    assert len(foreign_log) == n_foreign

    final = get_vs(admin, vs_name)
    # Every state the object went through, from the watch history.
    states: list[dict[str, Any]] = []
    w = watch.Watch()
    for event in w.stream(
        co.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        field_selector=f"metadata.name={vs_name}",
        resource_version=start_rv,
        timeout_seconds=30,
    ):
        states.append(event["object"])
        if event["object"]["metadata"]["resourceVersion"] == final["metadata"]["resourceVersion"]:
            w.stop()
    assert len(states) == n_foreign + act.writes

    bad_sums = [s for s in states if sum(weights_of(s, 1).values()) != 100]
    assert not bad_sums
    seen_annotations: set[str] = set()
    seen_matches: list[str] = []
    for s in states:  # monotonic: once a foreign key appears it never disappears
        ann = {k for k in s["metadata"].get("annotations") or {} if k.startswith("foreign.")}
        assert seen_annotations <= ann
        seen_annotations = ann
        matches = [m["uri"]["prefix"] for m in s["spec"]["http"][1].get("match") or []]
        assert matches[: len(seen_matches)] == seen_matches
        seen_matches = matches
    # Final: every foreign edit present, or superseded only by a later foreign edit.
    ann = final["metadata"]["annotations"]
    for kind, value in foreign_log:
        if kind == "annotation":
            assert value in ann
        if kind == "match":
            assert value in seen_matches
    last = {kind: value for kind, value in foreign_log}
    assert final["spec"]["http"][1]["retries"]["attempts"] == last["retries"]
    assert tuple(weights_of(final, 0).values()) == last["other-weights"]
    # Ours: the last successful write is what the managed route holds, and sums to 100.
    assert ours_ok, "no meshpilot write succeeded"
    assert weights_of(final, 1) == ours_ok[-1].as_dict()
    assert ann[MANAGED_ANNOTATION] == "primary"
    with capsys.disabled():
        print(
            f"\n[concurrency] meshpilot: {len(ours_ok)} writes ok, {act.conflicts} conflicts "
            f"retried, {len(ours_temporary)} gave up after retries (TemporaryError); "
            f"foreign: {len(foreign_log)} edits, {foreign_conflicts} 409s on GET+PUT; "
            f"{len(states)} states checked; writers ran {durations[0]:.1f} s and "
            f"{durations[1]:.1f} s; cache {'on' if watch_cache else 'off'}: {act.reads} GETs, "
            f"{act.lists} LISTs, {act.watch_events} watch events"
        )
    act.close()


# -- watch cache -----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def json_patch(admin: Any, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = custom(admin).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        name,
        ops,
        _content_type="application/json-patch+json",
    )
    return out


def test_watch_cache_reads_without_gets_and_follows_foreign_edits(admin: Any, vs_name: str) -> None:
    act = actuator(admin, watch_cache=True)
    try:
        route = RouteRef(NS, vs_name, "primary", "reviews")
        assert act.current(route).as_dict() == {"v1": 80, "v2": 15, "v3": 5}
        assert (act.reads, act.lists) == (0, 1)  # one LIST of the namespace, no GET
        for _ in range(20):
            act.current(route)
        # Our own write: patched from the cached copy, and read back without a GET.
        written = act.apply(route, Weights(["v1", "v2", "v3"], [60, 30, 10]))
        assert act.current(route) == written
        assert (act.reads, act.writes, act.conflicts) == (0, 1, 0)
        # A foreign edit of the managed weights arrives through the watch.
        json_patch(
            admin,
            vs_name,
            [
                {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 50},
                {"op": "replace", "path": "/spec/http/1/route/1/weight", "value": 40},
            ],
        )
        wait_until(lambda: act.current(route).as_dict() == {"v1": 50, "v2": 40, "v3": 10})
        # A new VirtualService shows up in the cache, a deleted one leaves it.
        fresh = f"reviews-{next(_seq)}"
        create(admin, virtual_service(fresh))
        cache = act._caches[NS]
        wait_until(lambda: cache.get(fresh) is not None)
        assert act.current(RouteRef(NS, fresh, 0, "reviews")).as_dict() == {"v3": 60, "v2": 40}
        custom(admin).delete_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", fresh)
        wait_until(lambda: cache.get(fresh) is None)
        assert act.reads == 0 and act.lists == 1 and act.watch_events >= 4
        with pytest.raises(PermanentError, match=f"VirtualService {NS}/{fresh} not found"):
            act.current(RouteRef(NS, fresh, 0, "reviews"))  # a miss asks the API server
        assert act.reads == 1
    finally:
        act.close()


def test_threads_share_one_destination_rule_list(admin: Any, vs_name: str) -> None:
    act = VirtualServiceActuator(api_client=admin, dr_cache_s=60.0, watch_cache=True)
    try:
        route = RouteRef(NS, vs_name, "primary", "reviews")
        assert act.cache_synced(NS, timeout_s=10)
        go = threading.Barrier(8)
        seen: list[Weights] = []

        def read() -> None:
            go.wait()
            seen.append(act.current(route))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(seen) == 8 and len(set(seen)) == 1
        assert act.dr_lists == 1 and act.reads == 0
    finally:
        act.close()


def test_a_stale_watch_cache_never_loses_a_foreign_edit(admin: Any, vs_name: str) -> None:
    act = actuator(admin, watch_cache=True)
    try:
        route = RouteRef(NS, vs_name, "primary", "reviews")
        act.current(route)
        cache = act._caches[NS]
        withheld: list[Any] = []
        cache._apply = withheld.append  # type: ignore[method-assign,assignment]  # the watch lags
        json_patch(  # a foreign edit of the managed route and of an annotation
            admin,
            vs_name,
            [
                {"op": "replace", "path": "/spec/http/1/timeout", "value": "3s"},
                {"op": "add", "path": "/metadata/annotations", "value": {"team/owner": "shop"}},
            ],
        )
        wait_until(lambda: len(withheld) >= 1)
        assert act.current(route).as_dict() == {"v1": 80, "v2": 15, "v3": 5}  # stale, as set up
        written = act.apply(route, Weights(["v1", "v2", "v3"], [70, 20, 10]))
        assert (act.conflicts, act.reads, act.writes) == (1, 1, 1)  # test op failed, re-read
        obj = get_vs(admin, vs_name)
        assert weights_of(obj, 1) == written.as_dict()
        assert obj["spec"]["http"][1]["timeout"] == "3s"  # the foreign edits survived
        assert obj["metadata"]["annotations"]["team/owner"] == "shop"
        assert cache.get(vs_name) is not None
        assert act.current(route) == written  # the cache keeps our (later) write
    finally:
        act.close()


def test_watch_cache_lists_again_after_410_gone(admin: Any, vs_name: str) -> None:
    act = actuator(admin, watch_cache=True)
    route = RouteRef(NS, vs_name, "primary", "reviews")
    # A resourceVersion from before the API server's watch window, as after a long
    # disconnection and an etcd compaction: the server answers 410 Gone.
    too_old = "1"
    probe = VirtualServiceCache(act, NS, watch_timeout_s=5)
    probe._resource_version, probe._stale = too_old, False
    with pytest.raises(WatchExpired):
        probe._watch_once()  # a watch from too_old: 410 Gone

    class StartsTooOld(VirtualServiceCache):
        """Lists, then (the first time) pretends the list was that old."""

        first = True

        def _list(self) -> None:
            super()._list()
            if self.first:
                self.first = False
                with self._lock:
                    self._resource_version = too_old

    cache = StartsTooOld(act, NS, watch_timeout_s=5)
    act._caches[NS] = cache
    try:
        lists = act.lists
        cache.start()
        wait_until(lambda: act.lists == lists + 2 and cache.synced.is_set())  # 410 -> list
        json_patch(
            admin, vs_name, [{"op": "replace", "path": "/spec/http/1/timeout", "value": "7s"}]
        )

        def followed() -> bool:
            obj = cache.get(vs_name)
            return obj is not None and obj["spec"]["http"][1].get("timeout") == "7s"

        wait_until(followed)
        assert act.current(route).as_dict() == {"v1": 80, "v2": 15, "v3": 5}
        assert act.reads == 0
    finally:
        act.close()


def test_conflicts_that_persist_become_temporary_error(admin: Any, vs_name: str) -> None:
    act = actuator(admin, max_conflict_retries=3, conflict_backoff_s=0.0)
    read = act._get
    n = iter(range(1000))

    def read_then_someone_writes(route: RouteRef) -> dict[str, Any]:
        obj = read(route)
        custom(admin).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "virtualservices",
            vs_name,
            {"metadata": {"labels": {"bump": str(next(n))}}},
        )
        return obj

    act._get = read_then_someone_writes  # type: ignore[method-assign]
    route = RouteRef(NS, vs_name, "primary", "reviews")
    with pytest.raises(TemporaryError, match="kept changing") as ei:
        act.apply(route, Weights(["v1", "v2", "v3"], [34, 33, 33]))
    assert act.conflicts == 3 and act.writes == 0
    assert ei.value.__cause__ is not None  # chained from the last conflict
    assert weights_of(get_vs(admin, vs_name), 1) == {"v1": 80, "v2": 15, "v3": 5}


# -- RBAC ----------------------------------------------------------------------------------------


def test_manifest_role_is_enough_and_no_more(
    lab: KubeLab, admin: Any, controller_api: Any, vs_name: str
) -> None:
    act = actuator(controller_api)
    route = RouteRef(NS, vs_name, "primary", FQDN)
    eventually(lambda: act.current(route))
    act.apply(route, Weights(["v1", "v2", "v3"], [70, 20, 10]))
    assert weights_of(get_vs(admin, vs_name), 1) == {"v1": 70, "v2": 20, "v3": 10}
    assert act.discover(route) == ("v1", "v2", "v3")
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}"
    for method, path in [
        ("DELETE", f"{base}/virtualservices/{vs_name}"),
        ("PUT", f"{base}/virtualservices/{vs_name}"),
        ("POST", f"{base}/virtualservices"),
        ("PATCH", f"{base}/destinationrules/reviews"),
        ("GET", f"/api/v1/namespaces/{NS}/secrets"),
        ("GET", f"/apis/{GROUP}/{VERSION}/namespaces/default/virtualservices"),
    ]:
        status, _ = lab.request(
            method,
            path,
            {} if method in ("PUT", "POST") else ([] if method == "PATCH" else None),
            user="controller",
            content_type="application/json-patch+json" if method == "PATCH" else "application/json",
        )
        assert status == 403, (method, path, status)


def test_without_patch_permission_apply_is_rbac_permanent_error(
    lab: KubeLab, admin: Any, vs_name: str
) -> None:
    role = manifest_role()
    role["metadata"]["name"] = "meshpilot-readonly"
    role["rules"][0]["verbs"] = ["get", "list", "watch"]  # no patch
    bind(admin, role, "readonly-user")
    act = actuator(impersonating(lab, "readonly-user"))
    route = RouteRef(NS, vs_name, "primary", FQDN)
    assert eventually(lambda: act.current(route)).as_dict() == {"v1": 80, "v2": 15, "v3": 5}
    with pytest.raises(PermanentError, match=r"RBAC denied: patch virtualservices") as ei:
        act.apply(route, Weights(["v1", "v2", "v3"], [70, 20, 10]))
    assert "readonly-user" in str(ei.value)
    from kubernetes.client.rest import ApiException

    assert isinstance(ei.value.__cause__, ApiException)
    assert weights_of(get_vs(admin, vs_name), 1) == {"v1": 80, "v2": 15, "v3": 5}


def test_without_list_and_watch_the_watch_cache_falls_back_to_gets(
    lab: KubeLab, admin: Any, vs_name: str
) -> None:
    role = manifest_role()
    role["metadata"]["name"] = "meshpilot-no-watch"
    role["rules"][0]["verbs"] = ["get", "patch"]  # no list, no watch
    bind(admin, role, "no-watch-user")
    act = actuator(impersonating(lab, "no-watch-user"), watch_cache=True, timeout_s=1.0)
    try:
        route = RouteRef(NS, vs_name, "primary", FQDN)
        assert eventually(lambda: act.current(route)).as_dict() == {"v1": 80, "v2": 15, "v3": 5}
        act.apply(route, Weights(["v1", "v2", "v3"], [70, 20, 10]))
        assert weights_of(get_vs(admin, vs_name), 1) == {"v1": 70, "v2": 20, "v3": 10}
        assert act.current(route).as_dict() == {"v1": 70, "v2": 20, "v3": 10}
        assert not act.cache_synced(NS) and act.lists == 0
        assert act.reads >= 2 and act.writes == 1  # current: a GET each time
    finally:
        act.close()


def test_without_any_role_reads_are_rbac_permanent_errors(
    lab: KubeLab, admin: Any, vs_name: str
) -> None:
    act = actuator(impersonating(lab, "nobody"))
    with pytest.raises(PermanentError, match=r"RBAC denied: get virtualservices"):
        act.current(RouteRef(NS, vs_name, "primary", FQDN))
    role = manifest_role()
    role["metadata"]["name"] = "vs-only"
    role["rules"] = role["rules"][:1]  # no DestinationRules
    bind(admin, role, "vs-only-user")
    api = impersonating(lab, "vs-only-user")
    eventually(lambda: get_vs(api, vs_name))  # the binding is in force
    with pytest.raises(PermanentError, match=r"RBAC denied: list destinationrules"):
        actuator(api).current(RouteRef(NS, vs_name, "primary", FQDN))


# -- permanent configuration errors -------------------------------------------------------------


def test_missing_objects_and_routes_are_permanent_errors_with_clear_messages(
    admin: Any, vs_name: str
) -> None:
    act = actuator(admin)
    cases: list[tuple[RouteRef, str]] = [
        (
            RouteRef(NS, "no-such-vs", "primary", "reviews"),
            f"VirtualService {NS}/no-such-vs not found",
        ),
        (RouteRef(NS, vs_name, "nope", "reviews"), "has no http route named 'nope'"),
        (RouteRef(NS, vs_name, 7, "reviews"), "has no http route #7 (it has 2)"),
        (RouteRef(NS, vs_name, "primary", "ratings"), "has no destination for host ratings"),
    ]
    for route, message in cases:
        for call in (act.current, lambda r: act.apply(r, Weights(["v1"], [100]))):
            with pytest.raises(PermanentError) as ei:
                call(route)
            assert message in str(ei.value)
    assert act.writes == 0


def test_destination_rule_problems_are_permanent_errors(admin: Any) -> None:
    act = actuator(admin)
    weights = Weights(["v1", "v2"], [50, 50])

    def two_subsets(name: str, host: str) -> RouteRef:
        vs = virtual_service(name, host=host)
        vs["spec"]["http"][1]["route"] = vs["spec"]["http"][1]["route"][:2]
        vs["spec"]["http"][1]["route"][0]["weight"] = 85
        create(admin, vs)
        return RouteRef(NS, name, "primary", host)

    no_dr = two_subsets(f"nodr-{next(_seq)}", "payments")
    with pytest.raises(PermanentError, match=r"no DestinationRule for host payments\.lirmm"):
        act.current(no_dr)

    create(admin, destination_rule("carts", "carts", None))
    bare = two_subsets(f"bare-{next(_seq)}", "carts")
    with pytest.raises(PermanentError, match=r"DestinationRule lirmm-services/carts .* defines no"):
        act.apply(bare, weights)

    create(admin, destination_rule("orders", f"orders.{NS}.svc.cluster.local", ["v1"]))
    partial = two_subsets(f"partial-{next(_seq)}", "orders")
    with pytest.raises(PermanentError, match=r"subsets \['v2'\] .* not defined by Destination"):
        act.discover(partial)
    for name in (no_dr, bare, partial):
        assert weights_of(get_vs(admin, name.virtual_service), 1) == {"v1": 85, "v2": 15}
    assert act.writes == 0


def test_weights_for_other_subsets_are_refused(admin: Any, vs_name: str) -> None:
    act = actuator(admin)
    with pytest.raises(PermanentError, match=r"has subsets \['v1', 'v2', 'v3'\] but the weights"):
        act.apply(RouteRef(NS, vs_name, "primary", "reviews"), Weights(["v1", "v2"], [50, 50]))


def test_foreign_weights_not_summing_to_100_are_reported_and_repairable(
    admin: Any, vs_name: str
) -> None:
    custom(admin).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        vs_name,
        [{"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 70}],  # 70+15+5=90
        _content_type="application/json-patch+json",
    )
    act = actuator(admin)
    route = RouteRef(NS, vs_name, "primary", "reviews")
    with pytest.raises(PermanentError, match=r"weights \{'v1': 70, 'v2': 15, 'v3': 5\}") as ei:
        act.current(route)
    assert "sum to 100, got 90" in str(ei.value)
    # An operator (a pin through meshpilot) writes a valid split: repaired.
    act.apply(route, Weights(["v1", "v2", "v3"], [80, 15, 5]))
    assert act.current(route).as_dict() == {"v1": 80, "v2": 15, "v3": 5}

    custom(admin).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        vs_name,
        [{"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 160}],
        _content_type="application/json-patch+json",
    )
    with pytest.raises(PermanentError, match=r"v1=160 is outside 0\.\.100"):
        act.current(route)


def test_weights_outside_0_100_cannot_be_sent(admin: Any, vs_name: str) -> None:
    for values in ([160, -60, 0], [101, 0, -1], [50, 40, 5]):
        with pytest.raises(ValueError):
            Weights(["v1", "v2", "v3"], values)
    act = actuator(admin)
    rv = get_vs(admin, vs_name)["metadata"]["resourceVersion"]
    route = RouteRef(NS, vs_name, "primary", "reviews")
    for bogus in ({"v1": 160, "v2": -60, "v3": 0}, [("v1", 100)]):
        with pytest.raises(TypeError, match="apply needs a Weights"):
            act.apply(route, bogus)  # type: ignore[arg-type]
    assert get_vs(admin, vs_name)["metadata"]["resourceVersion"] == rv
    assert act.writes == 0


# -- dry run --------------------------------------------------------------------------------------


def test_dry_run_answers_but_changes_nothing(admin: Any, vs_name: str) -> None:
    before = get_vs(admin, vs_name)
    act = actuator(admin, dry_run=True)
    route = RouteRef(NS, vs_name, "primary", "reviews")
    out = act.apply(route, Weights(["v1", "v2", "v3"], [0, 0, 100]))
    assert out.as_dict() == {"v1": 0, "v2": 0, "v3": 100}
    after = get_vs(admin, vs_name)
    assert after == before
    assert act.current(route).as_dict() == {"v1": 80, "v2": 15, "v3": 5}


# -- API server outage (last: restarts the API server) ---------------------------------------------


def test_hung_apiserver_costs_one_timeout_then_fails_fast(
    lab: KubeLab, admin: Any, vs_name: str
) -> None:
    act = VirtualServiceActuator(  # built from a kubeconfig: meshpilot's own retry policy
        kubeconfig=str(lab.kubeconfig("admin")), timeout_s=1.0, fail_fast_s=3.0
    )
    route = RouteRef(NS, vs_name, "primary", "reviews")
    act.current(route)
    # Hung, not dead: connections open, nothing answers. Returns once every thread of the
    # server is stopped (SIGSTOP lands asynchronously: a busy thread could still answer).
    lab.pause_apiserver()
    try:
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="cannot reach the API server"):
            act.current(route)
        first_s = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):  # a tick over 20 more routes
            with pytest.raises(TemporaryError, match="API server unreachable") as ei:
                act.apply(route, Weights(["v1", "v2", "v3"], [60, 20, 20]))
            assert ei.value.__cause__ is not None
        rest_s = time.monotonic() - started
    finally:
        lab.resume_apiserver()
    assert first_s < 2.5  # one read timeout of 1 s, not urllib3's default four attempts
    assert rest_s < first_s  # 20 calls cost less than the one that waited for the timeout
    deadline = time.monotonic() + 10
    while True:
        try:
            assert act.current(route).as_dict() == {"v1": 80, "v2": 15, "v3": 5}
            break
        except TemporaryError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    print(f"\n[hung] first call {first_s:.2f} s (timeout 1 s), then 20 calls in {rest_s:.3f} s")


@pytest.mark.parametrize("watch_cache", [False, True], ids=["get", "watch-cache"])
def test_apiserver_killed_mid_run_is_temporary_then_recovers(
    lab: KubeLab, admin: Any, vs_name: str, watch_cache: bool
) -> None:
    act = actuator(admin, timeout_s=2.0, watch_cache=watch_cache)
    if watch_cache:
        assert act.cache_synced(NS, timeout_s=10)
    route = RouteRef(NS, vs_name, "primary", "reviews")
    outcomes: list[str] = []
    written: list[Weights] = []
    unexpected: list[BaseException] = []
    stop = threading.Event()
    down = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                written.append(
                    act.apply(route, Weights(["v1", "v2", "v3"], [i % 91, 5, 95 - i % 91]))
                )
                outcomes.append("down-ok" if down.is_set() else "ok")
            except TemporaryError as e:
                outcomes.append("temporary")
                assert e.__cause__ is not None
                time.sleep(0.05)
            except BaseException as e:
                unexpected.append(e)
                return

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    lab.kill_apiserver()
    down.set()
    time.sleep(2.0)
    with pytest.raises(TemporaryError, match=r"cannot reach the API server|API server unreachable"):
        act.current(route)  # with the cache: out of sync, so not answered from memory
    assert not act.cache_synced(NS)
    lab.restart_apiserver()
    down.clear()
    restarted = len(outcomes)
    deadline = time.monotonic() + 15
    while "ok" not in outcomes[restarted:] and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.05)
    stop.set()
    t.join(30)
    assert not unexpected, unexpected
    assert "temporary" in outcomes
    assert outcomes[0] == "ok" and outcomes[-1] == "ok"
    # After the restart the object holds exactly the last successful write.
    assert weights_of(get_vs(admin, vs_name), 1) == written[-1].as_dict()
    assert act.current(route) == written[-1]
    if watch_cache:  # listed again once the API server answered
        assert act.cache_synced(NS, timeout_s=30) and act.lists >= 2
        assert act._cached(route) is not None
        assert act.current(route) == written[-1]
    act.close()
    print(f"\n[outage] {outcomes.count('ok')} writes ok, {outcomes.count('temporary')} temporary")
