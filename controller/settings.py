"""Everything `meshpilot serve` can be told, in one typed, documented place.

Sources, highest priority first: command-line options, environment variables
(``MESHPILOT_`` prefix, ``__`` between nested names: ``MESHPILOT_GUARD__MAX_STEP=5``), an
optional YAML file (``--config FILE`` or ``MESHPILOT_CONFIG``), then the defaults below. Nested
groups merge across sources, so a file can set ``guard.floors`` while the environment sets
``guard.max_step``. Unknown keys are errors (a typo must not silently fall back to a default),
and every problem becomes one `ConfigError` naming the file or variable and the field.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from controller.guard import GuardConfig
from meshcore import ConfigError, RouteRef
from meshcore.errors import yaml_error_text

__all__ = [
    "ApiSettings",
    "GuardSettings",
    "KubeSettings",
    "LeaderSettings",
    "PrometheusSettings",
    "RouteSettings",
    "Settings",
    "SimSettings",
    "StoreSettings",
    "VerifySettings",
    "default_store_path",
    "load_settings",
    "user_data_dir",
]

ENV_PREFIX = "MESHPILOT_"
CONFIG_ENV = "MESHPILOT_CONFIG"
"""Environment variable naming the YAML settings file when ``--config`` is not given."""

_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouteSettings(_Group):
    """One managed weighted route of a VirtualService."""

    namespace: str = Field(default="lirmm-services", pattern=_NAME)
    """Namespace of the VirtualService (default ``lirmm-services``)."""

    virtual_service: str = Field(pattern=_NAME)
    """Name of the VirtualService (required, no default)."""

    route: str | int = 0
    """The http route's ``name``, or its index in ``spec.http`` when unnamed (default 0)."""

    host: str = ""
    """Destination host whose subsets are weighted (default
    ``<virtual_service>.<namespace>.svc.cluster.local``)."""

    subsets: list[str] | None = None
    """Subsets in the order the policy sees them (default None: as the route lists them)."""

    capacity_rps: dict[str, float] = Field(default_factory=dict)
    """Nominal capacity per subset (rps), given to the policy when telemetry has none (the
    Prometheus observer does not know capacity; ``proportional`` and PPO use it). Default none."""

    balancer: Literal["least_request", "random"] | None = None
    """How the subsets' sidecars spread requests over their replicas, as the route's
    DestinationRule sets it: ``least_request`` (LEAST_REQUEST, Istio's default) or ``random``
    (RANDOM, and ROUND_ROBIN, whose per-replica queues behave alike); the planner and the
    supervisor model how much a version near its capacity queues with it. Default None:
    least-request."""

    @field_validator("route")
    @classmethod
    def _route(cls, value: str | int) -> str | int:
        if isinstance(value, str):
            if not value or "/" in value:
                raise ValueError(f"route must be a route name or index, got {value!r}")
            return int(value) if value.isdigit() else value
        if value < 0:
            raise ValueError(f"route index must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RouteSettings:
        if self.subsets is not None and len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"subsets must be unique, got {self.subsets}")
        for subset, rps in self.capacity_rps.items():
            if not rps > 0:
                raise ValueError(f"capacity_rps[{subset!r}] must be > 0 rps, got {rps}")
            if self.subsets is not None and subset not in self.subsets:
                raise ValueError(f"capacity_rps names {subset!r}, not one of {self.subsets}")
        return self

    def ref(self) -> RouteRef:
        host = self.host or f"{self.virtual_service}.{self.namespace}.svc.cluster.local"
        return RouteRef(self.namespace, self.virtual_service, self.route, host)


class GuardSettings(_Group):
    """The guard's limits (`controller.guard.GuardConfig` documents the why of each)."""

    max_step: int = Field(default=10, ge=1, le=100)
    """Max points a subset may move per tick (default 10)."""
    floors: dict[str, int] = Field(default_factory=dict)
    """Minimum weight per subset name (points, default none)."""
    hold_s: float = Field(default=30.0, ge=0)
    """Keep the current weights this long after data was last fresh (s, default 30)."""
    stale_after_s: float = Field(default=30.0, ge=0)
    """Data older than this is stale (s, default 30)."""
    decay_step: int = Field(default=5, ge=1, le=100)
    """Points per tick when drifting to the baseline without data (default 5)."""
    baseline: dict[str, int] | None = None
    """Safe split by subset (points; default None: the weights first seen on the route)."""
    min_change: int = Field(default=3, ge=1, le=200)
    """Smallest total change worth writing (L1 points, default 3: a one-point move between two
    subsets is jitter, not worth a VirtualService write; 1 writes every change)."""
    relief_ratio: float = Field(default=0.2, gt=0, le=1)
    """Slow or 5xx ratio (0..1, default 0.2) at which a subset is in distress: weight taken off
    it moves to healthy subsets at once, without max_step."""

    @model_validator(mode="after")
    def _valid(self) -> GuardSettings:
        try:
            self.to_config()
        except ConfigError as err:
            raise ValueError(str(err).removeprefix("GuardConfig: ")) from err
        return self

    def to_config(self) -> GuardConfig:
        return GuardConfig(
            max_step=self.max_step,
            floors=dict(self.floors),
            hold_s=self.hold_s,
            stale_after_s=self.stale_after_s,
            decay_step=self.decay_step,
            baseline=None if self.baseline is None else dict(self.baseline),
            min_change=self.min_change,
            relief_ratio=self.relief_ratio,
        )


def user_data_dir() -> Path:
    """Per-user data directory (XDG base directories): ``$XDG_DATA_HOME/meshpilot``, else
    ``~/.local/share/meshpilot``; a relative XDG_DATA_HOME is ignored, as the spec says."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "meshpilot"


def default_store_path() -> str:
    """The audit log's default file, ``decisions.db`` in `user_data_dir`."""
    return str(user_data_dir() / "decisions.db")


class StoreSettings(_Group):
    """Where decisions are recorded and for how long."""

    path: str = Field(default_factory=default_store_path)
    """SQLite file of the audit log (default ``decisions.db`` in the per-user data directory,
    ``$XDG_DATA_HOME/meshpilot`` or ``~/.local/share/meshpilot``, created when missing; the
    image sets ``/var/lib/meshpilot/decisions.db``, its volume; ``:memory:`` keeps nothing
    across restarts)."""
    max_rows: int | None = Field(default=100_000, ge=0)
    """Keep at most this many decisions (default 100 000, ~100 MB); null: unbounded."""
    max_age_s: float | None = Field(default=7 * 24 * 3600.0, ge=0)
    """Drop decisions older than this (s, default 7 days); null: keep forever."""


class PrometheusSettings(_Group):
    """Where live telemetry comes from (``mesh: k8s``)."""

    url: str = "http://prometheus.istio-system.svc:9090"
    """Prometheus base URL (default the Istio addon's in-cluster service)."""
    profile: str = "istio"
    """PromQL profile: which metric and label names to query (default ``istio``)."""
    window_s: float = Field(default=30.0, gt=0)
    """Rate window of the queries (s, default 30): longer is smoother but slower to react."""
    reporter: str | None = None
    """Which proxy's report to read (default None: the profile's, ``destination`` for Istio)."""
    timeout_s: float = Field(default=2.0, gt=0)
    """Per-query HTTP timeout (s, default 2), below the tick so a slow Prometheus holds."""
    recording_rules: bool = False
    """Read the stats from meshpilot's recording rules (two cheap queries per tick) instead of
    computing them in the tick (default false). Load ``meshpilot prometheus-rules`` output,
    made with the same window_s, reporter and slo_ms, into Prometheus first."""


class KubeSettings(_Group):
    """How the Istio actuator reaches the Kubernetes API (``mesh: k8s``)."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file (default None: in-cluster service-account credentials)."""
    context: str | None = None
    """The kubeconfig context to use (default None: the file's current context, which on a
    shared kubeconfig may be an admin's: name the controller's own context here)."""
    dry_run: bool = False
    """Send every patch with server-side dry run: validated, never persisted (default false)."""
    watch_cache: bool = True
    """Keep the VirtualServices in memory through one list + a watch per namespace, instead of
    a GET per route per tick (default true; needs ``list`` and ``watch``, else reads GET)."""
    managed_routes: bool = False
    """``mesh: k8s``: also manage every route a ``ManagedRoute`` (managedroutes.meshpilot.io)
    in ``managed_routes_namespace`` names, from the tick after it is created until it is
    deleted, with the controls of its spec; the leader writes its status (default false;
    needs the CRD and get/list/watch managedroutes, patch managedroutes/status)."""
    managed_routes_namespace: str = Field(default="lirmm-services", pattern=_NAME)
    """Namespace whose ManagedRoutes are watched (default ``lirmm-services``)."""


class LeaderSettings(_Group):
    """Leader election: with several replicas, only the Lease holder writes."""

    enabled: bool = False
    """Elect a leader through a coordination.k8s.io Lease (default false: single replica,
    always the leader)."""
    lease_name: str = "meshpilot"
    """Name of the Lease object (default ``meshpilot``)."""
    lease_namespace: str = "lirmm-services"
    """Namespace of the Lease (default ``lirmm-services``)."""
    lease_duration_s: float = Field(default=15.0, gt=0)
    """How long a lease is valid without renewal (s, default 15): a crashed leader is
    replaced after at most this long."""
    identity: str = Field(
        default_factory=lambda: os.environ.get("HOSTNAME") or socket.gethostname(),
        min_length=1,
    )
    """This replica's name in the Lease and the audit log (default ``$HOSTNAME``, the Pod name)."""


class ApiSettings(_Group):
    """The HTTP API (routes, decisions, overrides, health, metrics)."""

    host: str = "127.0.0.1"
    """Address to listen on (default 127.0.0.1, loopback only; a Pod needs 0.0.0.0 for probes)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """TCP port (default 8080)."""
    max_override_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    """Longest override an operator may pin (s, default 1 day): a forgotten pin expires."""
    token_file: str = Field(default="meshpilot-api-token", min_length=1)
    """With ``auth: token``: the file holding the bearer token every control (override,
    pause, resume, shadow) must carry as ``Authorization: Bearer <token>``; reads need none
    (default ``meshpilot-api-token`` in the working directory). `meshpilot serve` creates it
    with a random token, readable by its owner only, when it does not exist."""
    auth: Literal["token", "kubernetes"] | None = None
    """How the bearer of a control is checked (default None: ``kubernetes`` with ``mesh:
    k8s``, else ``token``). ``token``: the one token in ``token_file``; the audit log records
    the caller as ``token``. ``kubernetes``: a TokenReview says who the bearer is (recorded by
    username) and a SubjectAccessReview whether they may ``patch``
    ``managedroutes.meshpilot.io`` in the route's namespace (manifests/base/operator-rbac.yaml
    grants it); the controller needs ``create`` on tokenreviews and subjectaccessreviews."""
    auth_cache_s: float = Field(default=10.0, ge=0, le=300)
    """How long a Kubernetes review's answer is reused (s, default 10): a burst of controls
    costs one review, and a revoked permission takes effect within this long."""


class SimSettings(_Group):
    """The embedded simulated mesh (``mesh: sim``)."""

    scenarios: list[str] = Field(
        default_factory=lambda: ["degraded-canary", "latency-spike", "steady-80"], min_length=1
    )
    """Scenario names of the public suite or YAML paths; each becomes route
    ``lirmm-services/<name>/default`` (default degraded-canary, latency-spike, steady-80)."""
    speed: float = Field(default=1.0, gt=0, le=1000)
    """Simulated seconds per wall second (default 1.0: real time)."""
    seed: int = 0
    """Random seed of the first scenario; the next ones use seed+1, ... (default 0)."""


class LabSettings(_Group):
    """The live lab on this machine (``mesh: lab``): started by ``meshpilot lab up``."""

    state_dir: str | None = None
    """Where ``meshpilot lab up`` recorded the running lab (default None: its default,
    ``$XDG_STATE_HOME/meshpilot/lab`` or ``~/.local/state/meshpilot/lab``)."""
    window_s: float = Field(default=10.0, gt=0)
    """PromQL rate window (s, default 10): the lab's Prometheus scrapes Envoy every second,
    so a write shows in a 10 s window after about 10 s (judged one window later)."""


class VerifySettings(_Group):
    """Checking that traffic follows what was written."""

    tolerance_points: float = Field(default=10.0, ge=0, le=100)
    """Max distance between a subset's observed traffic share and its written weight (points,
    default 10): Prometheus scrape lag and Poisson noise move shares by a few points."""
    delay_s: float | None = Field(default=None, gt=0)
    """How long after a write to check it (s; default None: one rate window, the Prometheus
    ``window_s``, or the scenarios' window with ``mesh: sim``)."""


class _YamlFileSource(PydanticBaseSettingsSource):
    """The YAML file read by `load_settings`, below the environment in priority."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_FILE_DATA.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get() or {})


_FILE_DATA: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "meshpilot_settings_file", default=None
)


class Settings(BaseSettings):
    """Settings of `meshpilot serve`; build them with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    mesh: Literal["sim", "k8s", "lab"] = "sim"
    """What to control: the embedded simulator, Istio on Kubernetes, or the live lab of
    ``meshpilot lab up`` (default ``sim``)."""
    mode: Literal["active", "shadow"] = "active"
    """``shadow`` decides and records but never writes (default ``active``)."""
    tick_s: float = Field(default=5.0, gt=0, le=3600)
    """Wall seconds between ticks (default 5)."""
    slo_ms: float = Field(default=250.0, gt=0)
    """Latency bound of a good request (ms, default 250), for the reward and slow ratio."""
    routes: list[RouteSettings] = Field(default_factory=list)
    """Managed routes (default none; with ``mesh: sim``, empty means every simulated route)."""
    policy: str | None = None
    """Policy name (``ppo``, ``ppo:PATH``, ``proportional``, ...; default None: ``ppo`` when
    the shipped model loads, else ``proportional``, with the reason logged at startup)."""
    supervisor: bool = True
    """Serve the policy behind the supervisor (default true): a route whose split does visible
    harm (a version overloaded or failing that keeps its traffic) falls back to the
    model-based planner until the policy is harmless again; the reason is in the decision."""
    recheck_failed_every: int = Field(default=12, ge=1)
    """Ticks between re-checks of a route that failed permanently (default 12, 1 min)."""
    max_parallel_writes: int = Field(default=8, ge=1, le=64)
    """Routes written at once in a tick (threads; default 8, 1 = one after the other)."""
    guard: GuardSettings = Field(default_factory=GuardSettings)
    """Step limits, floors, stale-data hold (defaults: `GuardSettings`)."""
    store: StoreSettings = Field(default_factory=StoreSettings)
    """Decision log file and retention (defaults: `StoreSettings`)."""
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    """Telemetry source for ``mesh: k8s`` (defaults: `PrometheusSettings`)."""
    kube: KubeSettings = Field(default_factory=KubeSettings)
    """Kubernetes API access for ``mesh: k8s`` (defaults: `KubeSettings`)."""
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    """Leader election (defaults: `LeaderSettings`, disabled)."""
    api: ApiSettings = Field(default_factory=ApiSettings)
    """HTTP API (defaults: `ApiSettings`, 127.0.0.1:8080)."""
    sim: SimSettings = Field(default_factory=SimSettings)
    """Embedded simulated mesh for ``mesh: sim`` (defaults: `SimSettings`)."""
    lab: LabSettings = Field(default_factory=LabSettings)
    """The live lab for ``mesh: lab`` (defaults: `LabSettings`)."""
    verify: VerifySettings = Field(default_factory=VerifySettings)
    """Checking that traffic follows the writes (defaults: `VerifySettings`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        keys = [r.ref().key for r in self.routes]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"routes are listed twice: {duplicates}")
        if self.mesh == "k8s" and not self.routes and not self.kube.managed_routes:
            raise ValueError("mesh 'k8s' needs at least one entry in routes (or managed_routes)")
        return self

    def auth_mode(self) -> Literal["token", "kubernetes"]:
        """``api.auth``, or its default for the mesh (``kubernetes`` with ``k8s``)."""
        if self.api.auth is not None:
            return self.api.auth
        return "kubernetes" if self.mesh == "k8s" else "token"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read settings file ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_error_text(err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: settings must be a mapping, got {type(data).__name__}")
    return data


def _in_mapping(data: Mapping[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in loc:
        in_dict = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            return False
        node = node[part]
    return True


def _describe(err: ValidationError, path: Path | None, data: Mapping[str, Any]) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    msg = msg.removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    env_name = ENV_PREFIX + "__".join(str(p) for p in loc[:2]).upper() if loc else ""
    if path is not None and loc and _in_mapping(data, loc):
        source = str(path)
    elif env_name and any(k.upper() == env_name for k in os.environ):
        source = f"environment {env_name}"
    elif path is not None:
        source = f"settings ({path}, environment, options)"
    else:
        source = "settings (environment, options)"
    if not loc:
        return f"{source}: {msg}{more}"
    return f"{source}: field '{field}': {msg}{more}"


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings from `overrides` (command-line options, nested as dicts), the environment,
    the YAML `config_file` (default ``$MESHPILOT_CONFIG``) and the defaults.

    Raises `ConfigError` naming the file (or variable) and the field for any problem.
    """
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = os.environ[CONFIG_ENV]
    path = Path(config_file) if config_file is not None else None
    data = _read_file(path) if path is not None else {}
    token = _FILE_DATA.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err, path, data)) from err
    finally:
        _FILE_DATA.reset(token)
