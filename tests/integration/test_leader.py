"""`LeaseElector` against a real kube-apiserver v1.20.2 (coordination.k8s.io/v1 Leases, RBAC).

Cases:

* one round by hand: create, renew (same acquireTime), a second elector waits while the Lease is
  fresh and takes it only once it expired both on its own observation clock and by renewTime;
  a restarted replica with the *same* identity also waits (it cannot know it still leads); a
  follower whose wall clock jumps ahead does not take a live Lease (monotonic observation);
* the leader's own deadline: ``is_leader`` turns false ``renew_deadline_s`` after the last
  successful renewal, before the Lease can expire for anyone else, without any request;
* two electors with background threads on one Lease (2 s lease) through several crash
  handovers: never both leaders at any sampled instant; leadership intervals (renewal start ..
  deadline) never overlap; each follower took over only after the old Lease expired and
  within expiry + two polling periods; a graceful `stop()` releases and hands over before expiry;
* the API server killed under a running leader: it stops leading before its Lease would expire,
  nothing raises, and it leads again after the restart;
* RBAC: without ``create``/``update`` on leases the elector is never leader and logs a clear
  "RBAC denied" error; the Role in manifests/base/role.yaml is enough for the Lease it names
  (``meshpilot``) and denies any other Lease.

Fails with the fix (`make system-deps`) when the kube-apiserver/etcd binaries are not built.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_lab import CONTROLLER_USER, ROLE_FILE, KubeLab, running_lab

from controller.adapters.kube.lease import LeaseElector

pytestmark = pytest.mark.integration

NS = "lirmm-services"
LEASE_S = 2  # short leases keep handovers fast


@pytest.fixture(scope="module")
def lab() -> Iterator[KubeLab]:
    from kubernetes import client

    for kl in running_lab(istio_crds=False):
        core: Any = client.CoreV1Api(kl.api_client("admin"))
        core.create_namespace({"metadata": {"name": NS}})
        yield kl


@pytest.fixture(scope="module")
def admin(lab: KubeLab) -> Any:
    return lab.api_client("admin")


_seq = iter(range(10_000))


def lease_name() -> str:
    return f"lease-{next(_seq)}"


def read_lease(admin: Any, name: str) -> dict[str, Any]:
    from kubernetes import client

    lease = client.CoordinationV1Api(admin).read_namespaced_lease(name, NS)
    return admin.sanitize_for_serialization(lease)  # type: ignore[no-any-return]


Entry = tuple[str, float, bool | None, float]
"""(identity, round start, renewed, instant the write was confirmed); a release is logged as
(identity, instant it started, None, same instant): it no longer led from then on."""


class Recording(LeaseElector):
    """Logs every successful acquisition or renewal, and every release."""

    def __init__(self, log: list[Entry], **kw: Any) -> None:
        super().__init__(**kw)
        self.log = log

    def _won(self, lease: dict[str, Any], now: float, *, renewed: bool) -> None:
        super()._won(lease, now, renewed=renewed)
        self.log.append((self.identity, now, renewed, time.time()))

    def release(self) -> None:
        t = time.time()
        self.log.append((self.identity, t, None, t))
        super().release()


def elector(api: Any, name: str, identity: str, **kw: Any) -> LeaseElector:
    return LeaseElector(
        api_client=api, namespace=NS, name=name, identity=identity, lease_duration_s=LEASE_S, **kw
    )


# -- single rounds, explicit instants ------------------------------------------------------------


def test_rounds_create_renew_wait_and_take_over_after_expiry(admin: Any) -> None:
    name = lease_name()
    a, b = elector(admin, name, "a"), elector(admin, name, "b")
    t0 = time.time()
    assert a.try_acquire_or_renew(t0) and a.is_leader(t0)
    created = read_lease(admin, name)["spec"]
    assert created["holderIdentity"] == "a" and created["leaseDurationSeconds"] == LEASE_S
    assert created["leaseTransitions"] == 0

    assert a.try_acquire_or_renew(t0 + 0.5)
    renewed = read_lease(admin, name)["spec"]
    assert renewed["acquireTime"] == created["acquireTime"]
    assert renewed["renewTime"] != created["renewTime"]

    assert not b.try_acquire_or_renew(t0 + 0.6)  # fresh lease: b only observes
    assert b.holder == "a" and not b.is_leader(t0 + 0.6)
    # a stops renewing. Past renewTime + duration, but b has watched the record for less
    # than a lease duration (it first saw it at t0 + 0.6): still not expired for b.
    assert not b.try_acquire_or_renew(t0 + 0.5 + LEASE_S + 0.05)
    assert not a.is_leader(t0 + 0.5 + LEASE_S)  # a's own deadline passed long before
    assert b.try_acquire_or_renew(t0 + 0.6 + LEASE_S + 0.01)
    taken = read_lease(admin, name)["spec"]
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1

    # a comes back: its renewal loses (the record changed), it follows.
    assert not a.try_acquire_or_renew(t0 + 0.7 + LEASE_S)
    assert a.holder == "b" and not a.is_leader(t0 + 0.7 + LEASE_S)


def test_restarted_replica_with_same_identity_waits_for_expiry(admin: Any) -> None:
    name = lease_name()
    t0 = time.time()
    assert elector(admin, name, "pod-0").try_acquire_or_renew(t0)
    again = elector(admin, name, "pod-0")  # a new process, same Pod name
    assert not again.try_acquire_or_renew(t0 + 0.1)
    assert again.try_acquire_or_renew(t0 + 0.1 + LEASE_S + 0.01)


def test_follower_wall_clock_jumping_ahead_does_not_expire_a_live_lease(admin: Any) -> None:
    name = lease_name()
    leader = elector(admin, name, "steady")
    assert leader.try_acquire_or_renew()
    offset_s = [0.0]
    jumpy = elector(admin, name, "jumpy", clock=lambda: time.time() + offset_s[0])
    assert not jumpy.try_acquire_or_renew()
    offset_s[0] = 3600.0  # NTP step: an hour ahead on the follower's wall clock
    assert not jumpy.try_acquire_or_renew()  # monotonic time says the lease is fresh
    assert jumpy.holder == "steady" and leader.is_leader()


def test_leader_stops_before_its_lease_can_expire(admin: Any) -> None:
    e = elector(admin, lease_name(), "solo")
    t0 = time.time()
    assert e.try_acquire_or_renew(t0)
    assert 0 < e.renew_every_s < e.renew_deadline_s < e.lease_duration_s
    assert e.is_leader(t0 + e.renew_deadline_s - 0.01)
    assert not e.is_leader(t0 + e.renew_deadline_s)  # no request needed to stop leading
    assert t0 + e.renew_deadline_s < t0 + e.lease_duration_s  # before anyone may take over


# -- background threads: handovers --------------------------------------------------------------


def intervals(log: list[Entry], identity: str, deadline_s: float) -> list[list[float]]:
    """Leadership intervals [start, until] of one identity: an acquisition leads from the
    moment its write was confirmed until round start + deadline_s, a renewal extends that, a
    release ends it at once."""
    out: list[list[float]] = []
    for who, t, renewed, done in sorted(log, key=lambda r: r[3]):
        if who != identity:
            continue
        if renewed is None:  # released
            if out and out[-1][1] > t:
                out[-1][1] = t
        elif renewed and out and done <= out[-1][1]:
            out[-1][1] = t + deadline_s
        else:
            out.append([done, t + deadline_s])
    return out


def test_two_electors_never_lead_together_and_hand_over_after_expiry(
    admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    name = lease_name()
    log: list[Entry] = []

    def make(identity: str) -> Recording:
        return Recording(
            log, api_client=admin, namespace=NS, name=name, identity=identity,
            lease_duration_s=LEASE_S,
        )  # fmt: skip

    electors = {"a": make("a"), "b": make("b")}
    for e in electors.values():
        e.start()
    both: list[float] = []
    samples = 0
    stop_sampling = threading.Event()

    def sample() -> None:
        nonlocal samples
        while not stop_sampling.is_set():
            now = time.time()
            if all(e.is_leader(now) for e in electors.values()):
                both.append(now)
            samples += 1
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    handovers: list[tuple[str, float, float, float]] = []  # (new leader, expiry, taken, poll)
    try:
        for _ in range(4):
            deadline = time.monotonic() + 3 * LEASE_S
            while not any(e.is_leader() for e in electors.values()):
                assert time.monotonic() < deadline, "nobody became leader"
                time.sleep(0.02)
            leader_id = next(i for i, e in electors.items() if e.is_leader())
            time.sleep(0.5)  # a few renewals
            old = electors[leader_id]
            old.stop(release=False)  # crash: the Lease is left to expire
            killed_at = time.time()
            last_renew = max(t for who, t, r, _ in log if who == leader_id and r is not None)
            follower_id = next(i for i in electors if i != leader_id)
            follower = electors[follower_id]
            deadline = time.monotonic() + 4 * LEASE_S
            while not follower.is_leader():
                assert time.monotonic() < deadline, "no handover"
                time.sleep(0.01)
            taken = min(
                t for who, t, r, _ in log if who == follower_id and r is False and t > killed_at
            )
            handovers.append((follower_id, last_renew + LEASE_S, taken, follower.retry_every_s))
            electors[leader_id] = make(leader_id)  # the crashed replica restarts as follower
            electors[leader_id].start()
        # Graceful shutdown: release, and the follower takes over before the lease would expire.
        leader_id = next(i for i, e in electors.items() if e.is_leader())
        follower_id = next(i for i in electors if i != leader_id)
        last_renew = max(t for who, t, r, _ in log if who == leader_id and r is not None)
        released_at = time.time()
        electors[leader_id].stop()  # release=True
        deadline = time.monotonic() + 4 * LEASE_S
        while not electors[follower_id].is_leader():
            assert time.monotonic() < deadline, "no handover after release"
            time.sleep(0.01)
        after_release, taken_done = min(  # confirmed after the release
            (t, done)
            for who, t, r, done in log
            if who == follower_id and r is False and done > released_at
        )
    finally:
        stop_sampling.set()
        sampler.join()
        for e in electors.values():
            e.stop()

    assert samples > 1000 and not both, f"both leaders at {both[:5]}"
    for new, expiry, taken, poll in handovers:
        assert taken >= expiry, f"{new} took over {expiry - taken:.3f} s before expiry"
        # observed within one poll of the last renewal, expired one lease later, taken at the
        # next poll (polls jitter up to 20 %); 0.5 s for request latency on a busy machine.
        assert taken <= expiry + 2 * 1.2 * poll + 0.5, (taken - expiry, poll)
    assert after_release < last_renew + LEASE_S  # no waiting for expiry after a release
    deadline_s = electors["a"].renew_deadline_s
    spans = sorted(
        (start, until, who)
        for who in ("a", "b")
        for start, until in intervals(log, who, deadline_s)
    )
    for s1, u1, w1 in spans:
        for s2, u2, w2 in spans:
            assert w1 == w2 or u1 <= s2 or u2 <= s1, f"{w1} [{s1}, {u1}] vs {w2} [{s2}, {u2}]"
    with capsys.disabled():
        delays = ", ".join(f"{taken - expiry:+.2f}" for _, expiry, taken, _ in handovers)
        print(
            f"\n[leader] {samples} samples, never two leaders; crash handovers at expiry "
            f"{delays} s (poll {handovers[0][3]:.2f} s); release handover after "
            f"{taken_done - released_at:.2f} s"
        )


def test_leader_cut_off_from_apiserver_stops_leading_in_time(
    lab: KubeLab, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[Entry] = []
    e = Recording(
        log, api_client=admin, namespace=NS, name=lease_name(), identity="cut",
        lease_duration_s=LEASE_S, timeout_s=0.5,
    )  # fmt: skip
    e.start()
    try:
        deadline = time.monotonic() + 3 * LEASE_S
        while not e.is_leader():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        with caplog.at_level(logging.ERROR, logger="controller.adapters.kube.lease"):
            lab.kill_apiserver()
            killed = time.time()
            while e.is_leader():
                time.sleep(0.005)
            stopped = time.time()
            last_renew = max(t for _, t, r, _ in log if r is not None)
            assert stopped <= last_renew + e.renew_deadline_s + 0.05
            assert stopped < last_renew + e.lease_duration_s  # before expiry for anyone else
            assert stopped - killed < e.lease_duration_s
            time.sleep(e.renew_every_s * 2)
            assert e._thread is not None and e._thread.is_alive()  # no crash
            assert e.last_error and "cannot reach the API server" in e.last_error
            assert any("cannot reach the API server" in r.getMessage() for r in caplog.records)
        lab.restart_apiserver()
        deadline = time.monotonic() + 5 * LEASE_S
        while not e.is_leader():
            assert time.monotonic() < deadline, e.last_error
            time.sleep(0.05)
        assert e.last_error is None
    finally:
        e.stop()
        if not lab.apiserver_running:
            lab.restart_apiserver()


# -- RBAC ---------------------------------------------------------------------------------------


def bind(admin: Any, role: dict[str, Any], user: str) -> None:
    from kubernetes import client

    rbac: Any = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(NS, role)
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": f"{role['metadata']['name']}-{user}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )


def as_user(lab: KubeLab, user: str) -> Any:
    api = lab.api_client("admin")
    api.set_default_header("Impersonate-User", user)
    return api


def wait_until_allowed(lab: KubeLab, user: str, verb: str, name: str) -> None:
    """Poll a SubjectAccessReview until the RBAC cache answers `allowed`."""
    deadline = time.monotonic() + 10
    while True:
        _, body = lab.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "resourceAttributes": {
                        "namespace": NS,
                        "verb": verb,
                        "group": "coordination.k8s.io",
                        "resource": "leases",
                        "name": name,
                    },
                },
            },
        )
        if body["status"].get("allowed"):
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def lease_role(name: str, verbs: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": verbs}],
    }


def test_without_create_or_update_the_elector_never_leads_and_says_why(
    lab: KubeLab, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = lease_name()
    bind(admin, lease_role("leases-read", ["get", "list", "watch"]), "lease-reader")
    wait_until_allowed(lab, "lease-reader", "get", name)
    e = elector(as_user(lab, "lease-reader"), name, "reader")
    with caplog.at_level(logging.ERROR, logger="controller.adapters.kube.lease"):
        t0 = time.time()
        for i in range(5):
            assert not e.try_acquire_or_renew(t0 + i * LEASE_S)
    assert not e.is_leader()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(messages) == 1  # logged once, not every round
    assert f"RBAC denied: create leases.coordination.k8s.io {NS}/{name}" in messages[0]
    assert "lease-reader" in messages[0] and "not leader" in messages[0]

    # The Lease exists and expired, but updating it is not allowed either.
    caplog.clear()
    owner = elector(admin, name, "owner")
    assert owner.try_acquire_or_renew(t0)
    bind(admin, lease_role("leases-no-update", ["get", "create", "patch"]), "lease-no-update")
    wait_until_allowed(lab, "lease-no-update", "create", name)
    e2 = elector(as_user(lab, "lease-no-update"), name, "no-update")
    with caplog.at_level(logging.ERROR, logger="controller.adapters.kube.lease"):
        assert not e2.try_acquire_or_renew(t0 + 1)
        assert not e2.try_acquire_or_renew(t0 + 2 + 3 * LEASE_S)  # expired: tries to update
    assert not e2.is_leader()
    assert e2.last_error and e2.last_error.startswith(
        f"RBAC denied: update leases.coordination.k8s.io {NS}/{name}"
    )
    assert read_lease(admin, name)["spec"]["holderIdentity"] == "owner"


def test_manifest_role_allows_exactly_the_meshpilot_lease(lab: KubeLab, admin: Any) -> None:
    from kubernetes import client

    role = yaml.safe_load(ROLE_FILE.read_text())
    rbac: Any = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(NS, role)
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": "meshpilot-controller"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "meshpilot",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}
            ],
        },
    )
    wait_until_allowed(lab, CONTROLLER_USER, "update", "meshpilot")
    controller = lab.api_client("controller")
    t0 = time.time()
    first = elector(controller, "meshpilot", "pod-a")
    assert first.try_acquire_or_renew(t0)  # create
    assert first.try_acquire_or_renew(t0 + 0.3)  # get + update
    second = elector(controller, "meshpilot", "pod-b")
    assert not second.try_acquire_or_renew(t0 + 0.4) and second.last_error is None
    first.release()
    assert second.try_acquire_or_renew(t0 + 0.5)  # released: taken at once
    other = elector(controller, "not-meshpilot", "pod-a")
    assert not other.try_acquire_or_renew(t0)
    assert other.last_error and other.last_error.startswith("RBAC denied: get leases")
