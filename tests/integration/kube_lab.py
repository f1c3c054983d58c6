"""A throwaway etcd + kube-apiserver v1.20.2 on 127.0.0.1 for integration tests.

Binaries come from ``.ci/build-kube-apiserver.sh`` (cached in
``${MESHPILOT_KUBE_CACHE:-~/.cache/meshpilot/kube}/bin``). Everything else is created at
runtime in a temp dir: etcd data, a self-signed serving cert, service-account keys and a
static token file with two users:

* ``admin``: group ``system:masters`` (everything);
* ``controller``: user ``meshpilot-controller``, no groups beyond ``system:authenticated``,
  so with ``--authorization-mode=RBAC`` it can do nothing until a test grants it a Role.

Istio's CRDs: `install_istio_crds` installs Istio's own ``crd-all.gen.yaml`` when it is there
(`istio_crds_file`: ``$MESHPILOT_ISTIO_CRDS``, else ``<repo>/../shared/istio/crd-all.gen.yaml``),
else our small structural CRDs for VirtualService and DestinationRule
(``data/istio-networking-crds.yaml``: v1, weight an int32, unknown fields preserved). Tests that
check against Istio's full schemas ask for `istio_crds_file` themselves.

`pause_apiserver` hangs the API server (SIGSTOP) and returns only once every thread of its
process group is stopped; `resume_apiserver` undoes it.

Only stdlib + subprocess here (plus ``openssl`` on PATH, or the ``cryptography`` package);
the ``kubernetes`` client and PyYAML are imported lazily by the helpers that need them.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.helpers import SYSTEM_DEPS_FIX, free_port, tail

User = Literal["admin", "controller"]

REPO = Path(__file__).resolve().parents[2]
ISTIO_CRDS_ENV = "MESHPILOT_ISTIO_CRDS"
"""Names Istio's crd-all.gen.yaml; it must then exist."""
SHARED_ISTIO_CRDS = Path("..") / "shared" / "istio" / "crd-all.gen.yaml"
"""Where Istio's CRDs are found by default, relative to the repository: the ``shared`` folder
beside it (or beside the local repository it was cloned from, see `repository_roots`)."""
OWN_CRDS = Path(__file__).resolve().parent / "data" / "istio-networking-crds.yaml"
"""Our structural VirtualService + DestinationRule CRDs, used when Istio's file is absent."""
CONTROLLER_USER = "meshpilot-controller"
ROLE_FILE = REPO / "manifests" / "base" / "role.yaml"
"""The controller's least-privilege Role, as deployed."""
ISTIO_GROUP, ISTIO_VERSION = "networking.istio.io", "v1"


def repository_roots() -> list[Path]:
    """This repository, then the local repository it was cloned from (a fresh ``git clone`` of
    a checkout into a temporary folder still finds the data that sits beside the original)."""
    roots = [REPO]
    try:
        origin = subprocess.run(
            ["git", "-C", str(REPO), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        origin = ""
    origin = origin.removeprefix("file://")
    if origin and Path(origin).is_dir():
        roots.append(Path(origin).resolve())
    return roots


def istio_crds_file() -> Path | None:
    """Istio's crd-all.gen.yaml: ``$MESHPILOT_ISTIO_CRDS`` (FileNotFoundError if it names no
    file), else `SHARED_ISTIO_CRDS` beside one of `repository_roots`, else None."""
    env = os.environ.get(ISTIO_CRDS_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{ISTIO_CRDS_ENV}={env}: no such file")
        return path
    for root in repository_roots():
        candidate = (root / SHARED_ISTIO_CRDS).resolve()
        if candidate.is_file():
            return candidate
    return None


def virtual_service(
    name: str, namespace: str, host: str, weights: Sequence[tuple[str, int]], route: str = "primary"
) -> dict[str, Any]:
    """A VirtualService with one named, weighted http route over `weights` (subset, points)."""
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "name": route,
                    "route": [
                        {"destination": {"host": host, "subset": s}, "weight": w}
                        for s, w in weights
                    ],
                }
            ],
        },
    }


def destination_rule(
    name: str, namespace: str, host: str, subsets: Sequence[str]
) -> dict[str, Any]:
    """A DestinationRule declaring `subsets`, each selecting pods by ``version=<subset>``."""
    return {
        "apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "host": host,
            "subsets": [{"name": s, "labels": {"version": s}} for s in subsets],
        },
    }


def kube_cache_dir() -> Path:
    env = os.environ.get("MESHPILOT_KUBE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "meshpilot" / "kube"


def kube_binaries() -> tuple[Path, Path] | None:
    """(kube-apiserver, etcd) from the build cache, or None if either is missing."""
    bin_dir = kube_cache_dir() / "bin"
    apiserver, etcd = bin_dir / "kube-apiserver", bin_dir / "etcd"
    if all(p.is_file() and os.access(p, os.X_OK) for p in (apiserver, etcd)):
        return apiserver, etcd
    return None


def _make_keys(d: Path) -> None:
    """serving.crt/serving.key (self-signed, IP:127.0.0.1 + localhost) and sa.key (RSA)."""
    openssl = shutil.which("openssl")
    if openssl:

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True)

        run("genrsa", "-out", str(d / "sa.key"), "2048")
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(d / "serving.key"),
            "-out",
            str(d / "serving.crt"),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        )
        return
    # Fallback: the cryptography package.
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    (d / "sa.key").write_bytes(pem_key(rsa.generate_private_key(65537, 2048)))
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "serving.key").write_bytes(pem_key(key))
    (d / "serving.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class KubeLab:
    """etcd + kube-apiserver (RBAC, static tokens, HTTPS) on 127.0.0.1 with free ports."""

    def __init__(
        self,
        binaries: tuple[Path, Path] | None = None,
        *,
        workdir: Path | None = None,
        keep: bool = False,
    ) -> None:
        binaries = binaries or kube_binaries()
        if binaries is None:
            raise FileNotFoundError(
                f"kube-apiserver/etcd not found in {kube_cache_dir() / 'bin'}; "
                "run .ci/build-kube-apiserver.sh"
            )
        self.apiserver_bin, self.etcd_bin = binaries
        self._workdir_arg = workdir
        self.keep = keep
        self.dir: Path | None = None
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.port = 0
        self.tokens: dict[str, str] = {}
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False
        self.crds_file: Path | None = None
        """The file `install_istio_crds` installed last."""

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.dir is not None, "lab not started"
        return self.dir / "serving.crt"

    @property
    def apiserver_log(self) -> Path:
        assert self.dir is not None, "lab not started"
        return self.dir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        assert self.dir is not None, "lab not started"
        return self.dir / "etcd.log"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 90.0) -> KubeLab:
        """Start etcd, then kube-apiserver; return once /readyz answers 200 to the admin."""
        if self._apiserver is not None:
            return self
        if self._workdir_arg is not None:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            self.dir = self._workdir_arg
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="meshpilot-kubelab-"))
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        _make_keys(self.dir)
        self.tokens = {"admin": secrets.token_hex(16), "controller": secrets.token_hex(16)}
        # token,user,uid[,"group1,group2"]
        (self.dir / "tokens.csv").write_text(
            f'{self.tokens["admin"]},admin,admin,"system:masters"\n'
            f"{self.tokens['controller']},{CONTROLLER_USER},{CONTROLLER_USER}\n"
        )
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both processes; remove the temp dir unless keep=True."""
        for proc in (self._apiserver, self._etcd):
            self._terminate(proc)
        self._apiserver = self._etcd = None
        if self.dir is not None and not self.keep and self._workdir_arg is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> KubeLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_apiserver(self, sig: int = signal.SIGKILL) -> None:
        """Take the API server down (SIGKILL by default: a crash); etcd keeps running."""
        self._terminate(self._apiserver, sig)
        self._apiserver = None

    def restart_apiserver(self, timeout: float = 90.0) -> None:
        """(Re)start the API server on the same port and state; wait for /readyz."""
        if self._apiserver is not None and self._apiserver.poll() is None:
            self.kill_apiserver(signal.SIGTERM)
        self._start_apiserver(timeout)

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.poll() is None

    def pause_apiserver(self, timeout: float = 10.0, probe_timeout: float = 0.5) -> None:
        """Hang the API server (SIGSTOP to its process group): connections are accepted by the
        kernel but nothing answers.

        Returns once that is observable: every thread of every process in the group is in the
        stopped state (`kill` returns before a busy thread has actually stopped), and a probe
        request on the server's port gets no answer within `probe_timeout` (an answer means
        something else serves the port: RuntimeError, so a test never proceeds on a live port).
        """
        assert self._apiserver is not None and self.apiserver_running, "apiserver not running"
        stop_process_group(self._apiserver.pid, timeout)
        try:
            status, _ = self.request("GET", "/readyz", timeout=probe_timeout)
        except (OSError, ssl.SSLError):
            return  # timed out (or refused): nobody answers, as wanted
        self.resume_apiserver()
        raise RuntimeError(
            f"{self.url} answered {status} with the API server (pid {self._apiserver.pid}) "
            "stopped: another process serves this port"
        )

    def resume_apiserver(self) -> None:
        """Undo `pause_apiserver` (SIGCONT to the process group)."""
        if self._apiserver is not None and self._apiserver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._apiserver.pid, signal.SIGCONT)

    # ------------------------------------------------------------------ clients
    def kubeconfig(self, user: User = "admin") -> Path:
        """Write (and return) a kubeconfig for `user` usable by kubernetes.config."""
        assert self.dir is not None, "lab not started"
        if user not in self.tokens:
            raise ValueError(f"unknown user {user!r}; expected 'admin' or 'controller'")
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubelab",
                    "cluster": {"server": self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [
                {
                    "name": f"kubelab-{user}",
                    "context": {"cluster": "kubelab", "user": user, "namespace": "default"},
                }
            ],
            "current-context": f"kubelab-{user}",
        }
        path = self.dir / f"kubeconfig-{user}.yaml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return path

    def api_client(self, user: User = "admin") -> Any:
        """A kubernetes.client.ApiClient for `user` (imports kubernetes lazily)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig(user)))

    def grant_controller_role(self, namespace: str, binding: str = "meshpilot-controller") -> None:
        """Create `ROLE_FILE`'s Role in `namespace` and bind it to the controller user.

        The RBAC authorizer sees the binding a moment later: probe before relying on it.
        """
        import yaml
        from kubernetes import client

        rbac: Any = client.RbacAuthorizationV1Api(self.api_client("admin"))
        rbac.create_namespaced_role(namespace, yaml.safe_load(ROLE_FILE.read_text()))
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": binding},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "meshpilot",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": CONTROLLER_USER,
                    }
                ],
            },
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        user: User = "admin",
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """Raw HTTPS call (stdlib only); returns (status, parsed JSON or text)."""
        data = (
            None if body is None else (body if isinstance(body, bytes | str) else json.dumps(body))
        )
        if isinstance(data, str):
            data = data.encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.tokens[user]}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def install_istio_crds(self, path: Path | None = None, timeout: float = 60.0) -> list[str]:
        """Create (or replace) every CRD in `path` and wait until they are all Established and
        networking.istio.io/v1 is served. Returns the CRD names; `crds_file` records `path`.

        `path` defaults to Istio's crd-all.gen.yaml (`istio_crds_file`) when it is there, else
        to our own structural CRDs (`OWN_CRDS`)."""
        import yaml
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        path = path or istio_crds_file() or OWN_CRDS
        self.crds_file = Path(path)
        docs = [
            d
            for d in yaml.safe_load_all(Path(path).read_text())
            if d and d.get("kind") == "CustomResourceDefinition"
        ]
        if not docs:
            raise ValueError(f"no CustomResourceDefinition in {path}")
        ext: Any = client.ApiextensionsV1Api(self.api_client("admin"))
        names = []
        for doc in docs:
            name = doc["metadata"]["name"]
            names.append(name)
            try:
                # _preload_content=False: skip model deserialisation (status may be sparse)
                ext.create_custom_resource_definition(doc, _preload_content=False)
            except ApiException as e:
                if e.status != 409:
                    raise
                current = json.loads(
                    ext.read_custom_resource_definition(name, _preload_content=False).data
                )
                doc = dict(
                    doc,
                    metadata=dict(
                        doc["metadata"], resourceVersion=current["metadata"]["resourceVersion"]
                    ),
                )
                ext.replace_custom_resource_definition(name, doc, _preload_content=False)
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            items = json.loads(ext.list_custom_resource_definition(_preload_content=False).data)[
                "items"
            ]
            for crd in items:
                status = crd.get("status") or {}
                conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
                if conds.get("Established") == "True":
                    pending.discard(crd["metadata"]["name"])
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not Established after {timeout}s: {sorted(pending)}")
            time.sleep(0.2)
        # Established can precede discovery by a moment: wait until the group is served.
        while True:
            status, _ = self.request("GET", "/apis/networking.istio.io/v1")
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("networking.istio.io/v1 not served")
            time.sleep(0.2)
        return names

    # ------------------------------------------------------------------ internals
    def _popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            return subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.dir,
            )

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def _start_etcd(self, timeout: float) -> None:
        assert self.dir is not None
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._etcd = self._popen(
            [
                str(self.etcd_bin),
                "--name",
                "kubelab",
                "--data-dir",
                str(self.dir / "etcd-data"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"kubelab={peer_url}",
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ],
            self.etcd_log,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._etcd.poll() is not None:
                raise RuntimeError(f"etcd exited ({self._etcd.returncode}):\n{tail(self.etcd_log)}")
            try:
                with urllib.request.urlopen(client_url + "/health", timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy after {timeout}s:\n{tail(self.etcd_log)}")
            time.sleep(0.1)

    def _start_apiserver(self, timeout: float) -> None:
        assert self.dir is not None
        d = self.dir
        self._apiserver = self._popen(
            [
                str(self.apiserver_bin),
                "--etcd-servers",
                f"http://127.0.0.1:{self.etcd_port}",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--insecure-port",
                "0",
                "--tls-cert-file",
                str(d / "serving.crt"),
                "--tls-private-key-file",
                str(d / "serving.key"),
                "--cert-dir",
                str(d / "certs"),
                "--authorization-mode",
                "RBAC",
                "--token-auth-file",
                str(d / "tokens.csv"),
                "--anonymous-auth=false",
                "--service-account-key-file",
                str(d / "sa.key"),
                "--service-account-signing-key-file",
                str(d / "sa.key"),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--api-audiences",
                "https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--profiling=false",
                "--logtostderr",
                "--v",
                "0",
            ],
            self.apiserver_log,
        )
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if self._apiserver.poll() is not None:
                raise RuntimeError(
                    f"kube-apiserver exited ({self._apiserver.returncode}):\n"
                    f"{tail(self.apiserver_log)}"
                )
            try:
                status, last = self.request("GET", "/readyz", timeout=2)
                if status == 200:
                    return
            except (OSError, ssl.SSLError) as e:
                last = e
            if time.monotonic() > deadline:
                self.kill_apiserver()
                raise TimeoutError(
                    f"kube-apiserver not ready after {timeout}s (last: {last}):\n"
                    f"{tail(self.apiserver_log)}"
                )
            time.sleep(0.2)


def _thread_states(pgid: int) -> dict[int, str]:
    """{tid: state letter from /proc/PID/task/TID/stat} of every thread of every process in
    process group `pgid` (threads that vanish while reading are left out)."""
    states: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) != pgid:
                continue
            for task in os.scandir(Path(entry.path, "task")):
                stat = Path(task.path, "stat").read_text()
                states[int(task.name)] = stat.rpartition(")")[2].split()[0]
        except (OSError, IndexError, ValueError):
            continue
    return states


def stop_process_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGSTOP process group `pgid`, then wait until all its threads are stopped (state 'T').

    The signal is delivered asynchronously: a thread running on another CPU (or in an
    uninterruptible wait) keeps going for a moment, and a Go server can still answer a request
    meanwhile. TimeoutError (with the states seen) if the group does not stop within `timeout`.
    """
    os.killpg(pgid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        states = _thread_states(pgid)
        if not states:
            raise ProcessLookupError(f"no process left in process group {pgid}")
        if all(state == "T" for state in states.values()):
            return
        if time.monotonic() > deadline:
            running = {tid: st for tid, st in states.items() if st != "T"}
            raise TimeoutError(f"process group {pgid} not stopped after {timeout}s: {running}")
        time.sleep(0.01)


def running_lab(*, istio_crds: bool = True) -> Iterator[KubeLab]:
    """A started lab for a pytest fixture (``yield from`` or iterate it); stopped afterwards.

    With `istio_crds`, Istio's CRDs are installed (or ours, see `install_istio_crds`). Fails the
    calling test with the fix when the binaries have not been built: ``make test`` builds them.
    """
    from tests.helpers import fail

    binaries = kube_binaries()
    if binaries is None:
        fail(
            f"kube-apiserver/etcd not built in {kube_cache_dir() / 'bin'}: {SYSTEM_DEPS_FIX} "
            "(builds them with .ci/build-kube-apiserver.sh, ~5 min)"
        )
    kl = KubeLab(binaries)
    kl.start()
    try:
        if istio_crds:
            kl.install_istio_crds()
        yield kl
    finally:
        kl.stop()
