"""Lab files: which services the lab runs, their versions, and the traffic they get.

A lab file is YAML, strict like a scenario file (unknown keys are errors). Each service is a
route: its versions are scenario `Subset` entries (replicas, service time and distribution,
error rate, capacity factor), so a scenario file and a lab service describe a version the same
way and `LabSpec.from_scenario` turns any scenario into a one-service lab.

```yaml
name: lirmm-slice
namespace: lirmm-services
slo_ms: 250
services:
  - name: product-service
    port: 9080
    load: {rps: 200}
    subsets:
      - {name: v1, replicas: 3, service_ms: 20}
      - {name: v2, replicas: 2, service_ms: 25}
    initial_weights: {v1: 60, v2: 40}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from envs.simulator.scenario import Load, Scenario, Subset
from envs.yaml_files import read_yaml, resolve, validation_text
from meshcore.errors import ConfigError
from meshcore.model import WEIGHT_TOTAL, RouteRef, largest_remainder

LABS_DIR = Path(__file__).resolve().parent / "labs"
"""Lab files shipped with meshpilot (`default` is the lirmm slice)."""

DEFAULT_LAB = "lirmm-slice"
"""The lab `meshpilot lab up` starts when no file is given."""

MAX_SERVICE_MS = 600_000.0
"""Longest mean service time (ms) a lab backend serves (ten minutes)."""

ROUTE_NAME = "default"
"""Name of the one weighted http route of every lab service (as in the simulated mesh)."""


class LabSpecError(ConfigError):
    """A lab file is missing, not YAML, or does not match the format."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabService(_Strict):
    """One service of the lab: a weighted route over its versions (subsets).

    port: the service port in Istio cluster names (``outbound|PORT|SUBSET|HOST``); load: the
    Poisson traffic `meshpilot lab load` sends by default; timeout_ms: Envoy's route timeout
    (a slower request is answered 504 and counts as an error, as in the simulator).
    """

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    port: int = Field(default=9080, ge=1, le=65535)
    load: Load
    subsets: tuple[Subset, ...] = Field(min_length=1, max_length=16)
    initial_weights: dict[str, StrictInt] | None = None
    timeout_ms: float = Field(default=5000.0, gt=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> LabService:
        for sub in self.subsets:
            if sub.service_ms > MAX_SERVICE_MS:
                raise ValueError(
                    f"subset {sub.name}: service_ms {sub.service_ms:g} is above the backends' "
                    f"{MAX_SERVICE_MS:g}"
                )
        names = [s.name for s in self.subsets]
        if len(set(names)) != len(names):
            raise ValueError(f"subset names must be unique, got {names}")
        if self.initial_weights is not None:
            unknown = sorted(set(self.initial_weights) - set(names))
            if unknown:
                raise ValueError(f"initial_weights names unknown subsets {unknown}")
            if any(not 0 <= v <= WEIGHT_TOTAL for v in self.initial_weights.values()):
                raise ValueError("initial_weights must be 0..100")
            if sum(self.initial_weights.values()) != WEIGHT_TOTAL:
                raise ValueError("initial_weights must sum to 100")
        return self

    @property
    def subset_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.subsets)

    def host(self, namespace: str) -> str:
        """The service's FQDN, as Istio's ``destination_service`` label names it."""
        return f"{self.name}.{namespace}.svc.cluster.local"

    def route(self, namespace: str) -> RouteRef:
        """The route the controller manages: ``<namespace>/<service>/default``."""
        return RouteRef(namespace, self.name, ROUTE_NAME, self.host(namespace))

    def start_weights(self) -> dict[str, int]:
        """`initial_weights`, or a split proportional to nominal capacity."""
        if self.initial_weights is not None:
            return {n: int(self.initial_weights.get(n, 0)) for n in self.subset_names}
        values = largest_remainder([s.capacity_rps for s in self.subsets])
        return dict(zip(self.subset_names, values, strict=True))


class LabSpec(_Strict):
    """A whole lab: its services, the namespace they pretend to live in, and the SLO (ms) the
    latency histogram must have as a bucket bound."""

    name: str = Field(min_length=1)
    namespace: str = Field(
        default="lirmm-services", max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    slo_ms: float = Field(default=250.0, gt=0.0)
    services: tuple[LabService, ...] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _unique(self) -> LabSpec:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        return self

    def service(self, name: str) -> LabService:
        """The service called `name` (a `LabSpecError` naming the known ones otherwise)."""
        for s in self.services:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.services)
        raise LabSpecError(f"lab {self.name!r} has no service {name!r} (it has: {known})")

    def routes(self) -> list[RouteRef]:
        return [s.route(self.namespace) for s in self.services]

    @classmethod
    def from_scenario(cls, scenario: Scenario, *, namespace: str = "lirmm-services") -> LabSpec:
        """A one-service lab running `scenario`'s versions, load and initial split (its events
        are replayed by whoever drives the lab, as `fault` calls at their times)."""
        service_name = _service_name(scenario.name)
        return cls(
            name=scenario.name,
            namespace=namespace,
            slo_ms=scenario.slo_ms,
            services=(
                LabService(
                    name=service_name,
                    load=scenario.load,
                    subsets=scenario.subsets,
                    initial_weights=scenario.start_weights(),
                    timeout_ms=scenario.timeout_ms,
                ),
            ),
        )


def _service_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return (cleaned or "service")[:63].rstrip("-") or "service"


def parse_lab(data: Any, *, source: str = "<lab>") -> LabSpec:
    """Validate parsed YAML; raises `LabSpecError` naming the source and the first bad field."""
    if not isinstance(data, Mapping):
        raise LabSpecError(f"{source}: a lab file must be a mapping, got {type(data).__name__}")
    try:
        return LabSpec.model_validate(dict(data))
    except ValidationError as err:
        raise LabSpecError(validation_text(err, source)) from err


def load_lab(path: str | Path | None = None) -> LabSpec:
    """Read a lab file; None or a bare name resolves inside `LABS_DIR`."""
    p = LABS_DIR / f"{DEFAULT_LAB}.yaml" if path is None else resolve(path, LABS_DIR)
    return parse_lab(read_yaml(p, "lab file", LabSpecError), source=str(p))
