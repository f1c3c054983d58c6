"""What one lab backend process serves: services, versions, one port per replica, a seed.

The lab orchestrator writes it as JSON and ``python -m envs.lab.backend --config FILE`` reads
it; both sides validate with these models, so a bad field is named before a port is opened.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

QUEUE_LIMIT = 1024
"""Requests waiting or in service per replica before an immediate 503 (as the simulator's
`envs.simulator.engine.QUEUE_LIMIT`: Envoy's default circuit-breaker threshold)."""


_NAME = r"^[a-zA-Z0-9]([-a-zA-Z0-9_.]*)$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubsetConfig(_Strict):
    """One version of a service: its parameters at start and one port per replica.

    service_ms: mean service time (ms) before the capacity factor; cv: coefficient of
    variation of a lognormal service time (exponential ignores it); concurrency: requests one
    replica serves at once (FCFS beyond it); queue_limit: requests waiting or in service on one
    replica before an immediate 503.
    """

    name: str = Field(min_length=1, max_length=63, pattern=_NAME)
    service_ms: float = Field(gt=0.0, le=600_000.0)
    service_dist: Literal["exponential", "lognormal"] = "exponential"
    cv: float = Field(default=1.0, gt=0.0, le=20.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    capacity_factor: float = Field(default=1.0, gt=0.0, le=100.0)
    concurrency: int = Field(default=1, ge=1, le=1024)
    ports: tuple[int, ...] = Field(min_length=1, max_length=256)
    queue_limit: int = Field(default=QUEUE_LIMIT, ge=1, le=1_000_000)


class ServiceConfig(_Strict):
    """One service (the `Host` it is called by is the orchestrator's business, not ours)."""

    service: str = Field(min_length=1, max_length=253)
    subsets: tuple[SubsetConfig, ...] = Field(min_length=1, max_length=64)


class BackendConfig(_Strict):
    """Everything one backend process serves; written by the lab orchestrator as JSON.

    seed: seeds every replica's generator (one `SeedSequence` child per replica, in file
    order); control_port: the control endpoint's port.
    """

    seed: int = Field(default=0, ge=0)
    control_port: int = Field(ge=1, le=65535)
    services: tuple[ServiceConfig, ...] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _unique(self) -> BackendConfig:
        names = [s.service for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        ports = [self.control_port]
        for svc in self.services:
            subs = [s.name for s in svc.subsets]
            if len(set(subs)) != len(subs):
                raise ValueError(f"subset names of {svc.service!r} must be unique, got {subs}")
            for sub in svc.subsets:
                if any(not 1 <= p <= 65535 for p in sub.ports):
                    raise ValueError(f"{svc.service}/{sub.name}: ports must be 1..65535")
                ports.extend(sub.ports)
        if len(set(ports)) != len(ports):
            raise ValueError("every replica and the control endpoint need their own port")
        return self

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> BackendConfig:
        """Parse and validate; raises `ValueError` naming the first bad field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ValueError(f"backend config: field '{loc}': {first['msg']}") from err
