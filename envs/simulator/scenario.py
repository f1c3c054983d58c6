"""Scenario files: the public YAML format of the simulator and of `meshpilot evaluate`.

One scenario per file, unknown keys are an error, missing optional keys take defaults
(see DESIGN.md). Every validation problem becomes one `ScenarioError` that names the file and
the field, so a typo in a user's scenario never surfaces as a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from envs.yaml_files import read_yaml, resolve, validation_text
from meshcore.errors import ConfigError
from meshcore.model import WEIGHT_TOTAL, largest_remainder

SUITE_DIR = Path(__file__).resolve().parents[1] / "scenarios"
"""The public scenario suite shipped with meshpilot."""

SETTABLE_FIELDS = ("replicas", "service_ms", "cv", "error_rate", "capacity_factor")


class ScenarioError(ConfigError):
    """A scenario file is missing, not YAML, or does not match the format."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Diurnal(_Strict):
    """Sinusoidal load modulation: rps * (1 + amplitude * sin(2π (t + phase_s) / period_s))."""

    amplitude: float = Field(ge=0.0, lt=1.0)
    period_s: float = Field(gt=0.0)
    phase_s: float = 0.0


class Burst(_Strict):
    """Load multiplied by `factor` during [at_s, at_s + duration_s)."""

    at_s: float = Field(ge=0.0)
    duration_s: float = Field(gt=0.0)
    factor: float = Field(gt=0.0)


class Load(_Strict):
    """Mean Poisson arrival rate (rps) and its modulations."""

    rps: float = Field(gt=0.0)
    diurnal: Diurnal | None = None
    bursts: tuple[Burst, ...] = ()


class Subset(_Strict):
    """One service version: `replicas` FCFS servers with mean service time `service_ms`."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9_.]*)$")
    replicas: int = Field(ge=1, le=256)
    service_ms: float = Field(gt=0.0)
    service_dist: Literal["exponential", "lognormal"] = "exponential"
    cv: float = Field(default=1.0, gt=0.0, le=20.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    capacity_factor: float = Field(default=1.0, gt=0.0, le=100.0)

    @property
    def capacity_rps(self) -> float:
        """Nominal throughput limit: replicas * 1000 / service_ms * capacity_factor (rps)."""
        return self.replicas * 1000.0 / self.service_ms * self.capacity_factor


class Event(_Strict):
    """At `at_s`, move `subset`'s fields to the values in `set` over `ramp_s`; revert after
    `duration_s` (over the same ramp) when given."""

    at_s: float = Field(ge=0.0)
    subset: str
    set: dict[str, float]
    ramp_s: float = Field(default=0.0, ge=0.0)
    duration_s: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _known_fields(self) -> Event:
        if not self.set:
            raise ValueError("'set' must name at least one field")
        for key, value in self.set.items():
            if key not in SETTABLE_FIELDS:
                raise ValueError(
                    f"'set' field {key!r} is not settable; use one of {', '.join(SETTABLE_FIELDS)}"
                )
            if value < 0 or (key in ("capacity_factor", "service_ms", "cv") and value <= 0):
                raise ValueError(f"'set.{key}' must be positive, got {value}")
            if key == "error_rate" and value > 1:
                raise ValueError(f"'set.error_rate' must be within 0..1, got {value}")
            if key == "replicas" and (value < 1 or value != int(value)):
                raise ValueError(f"'set.replicas' must be a whole number >= 1, got {value}")
        return self


class Telemetry(_Strict):
    """What the controller sees, as Prometheus would report it."""

    window_s: float = Field(default=30.0, gt=0.0)
    scrape_s: float = Field(default=5.0, gt=0.0)
    drop_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    noise: float = Field(default=0.0, ge=0.0, le=5.0)


class Scenario(_Strict):
    """One simulated route: load, subsets, faults, telemetry; times in s, latencies in ms."""

    name: str = Field(min_length=1)
    duration_s: float = Field(gt=0.0)
    step_s: float = Field(default=5.0, gt=0.0)
    slo_ms: float = Field(default=250.0, gt=0.0)
    timeout_ms: float = Field(default=5000.0, gt=0.0)
    load: Load
    subsets: tuple[Subset, ...] = Field(min_length=1, max_length=64)
    balancer: Literal["least_request", "random"] = "least_request"
    events: tuple[Event, ...] = ()
    telemetry: Telemetry = Telemetry()
    initial_weights: dict[str, int] | None = None
    warmup_s: float = Field(default=0.0, ge=0.0)
    """Seconds the mesh runs at `initial_weights` before t = 0, unscored (default 0: the
    episode starts on idle queues with no telemetry). A multiple of `step_s`. Models taking
    over a running mesh: the controller's first decision at t = 0 sees the warmup's
    telemetry and inherits its queues, as `meshpilot serve` sees Prometheus' history when
    it starts on a live route."""

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [s.name for s in self.subsets]
        if len(set(names)) != len(names):
            raise ValueError(f"subset names must be unique, got {names}")
        if self.step_s > self.duration_s:
            raise ValueError("step_s must not exceed duration_s")
        warmup_steps = self.warmup_s / self.step_s
        if abs(warmup_steps - round(warmup_steps)) > 1e-9:
            raise ValueError(
                f"warmup_s ({self.warmup_s:g}) must be a multiple of step_s ({self.step_s:g})"
            )
        if self.warmup_s > self.duration_s:
            raise ValueError("warmup_s must not exceed duration_s")
        for i, ev in enumerate(self.events):
            if ev.subset not in names:
                raise ValueError(f"events[{i}].subset {ev.subset!r} is not one of {names}")
        if self.initial_weights is not None:
            unknown = sorted(set(self.initial_weights) - set(names))
            if unknown:
                raise ValueError(f"initial_weights names unknown subsets {unknown}")
            bad = {k: v for k, v in self.initial_weights.items() if not 0 <= v <= WEIGHT_TOTAL}
            if bad:
                raise ValueError(f"initial_weights must be 0..100, got {bad}")
            total = sum(self.initial_weights.values())
            if total != WEIGHT_TOTAL:
                raise ValueError(f"initial_weights must sum to 100, got {total}")
        return self

    @property
    def subset_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.subsets)

    @property
    def n_steps(self) -> int:
        return max(1, round(self.duration_s / self.step_s))

    @property
    def n_warmup_steps(self) -> int:
        """Unscored steps at the initial weights before t = 0 (`warmup_s` / `step_s`)."""
        return round(self.warmup_s / self.step_s)

    def start_weights(self) -> dict[str, int]:
        """`initial_weights`, or a split proportional to nominal capacity."""
        if self.initial_weights is not None:
            return {n: int(self.initial_weights.get(n, 0)) for n in self.subset_names}
        values = largest_remainder([s.capacity_rps for s in self.subsets])
        return dict(zip(self.subset_names, values, strict=True))

    def with_changes(self, **changes: Any) -> Scenario:
        """A validated copy with top-level fields replaced (used by domain randomization)."""
        data = self.model_dump()
        data.update(changes)
        return Scenario.model_validate(data)


def parse_scenario(data: Any, *, source: str = "<scenario>") -> Scenario:
    """Validate already-parsed YAML/JSON data; raises `ScenarioError` naming source and field."""
    if data is None:
        raise ScenarioError(f"{source}: the scenario is empty")
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: a scenario must be a mapping, got {type(data).__name__}")
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as err:
        raise ScenarioError(validation_text(err, source)) from err


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file; a bare name resolves inside the public suite."""
    p = resolve(path, SUITE_DIR)
    return parse_scenario(read_yaml(p, "scenario file", ScenarioError), source=str(p))


def suite_paths() -> list[Path]:
    """Every scenario file of the public suite, sorted by name."""
    return sorted(SUITE_DIR.glob("*.yaml"))
