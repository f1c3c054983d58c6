"""Faults on a running lab: parse what to change, apply it to the backends, remember what was.

A fault names one version (service + subset) and new values for the fields a scenario event
can set at run time (`FAULT_FIELDS`), plus ``latency_factor``: a multiple of the version's
*nominal* service time from the lab file (so 5 means five times slower, however often it is
applied). `replicas` cannot change while Envoy runs with fixed endpoints: use
``capacity_factor`` for the same effect on capacity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Protocol

from envs.lab import backend_client, replica
from envs.lab.spec import LabSpec, LabSpecError

__all__ = ["FAULT_FIELDS", "LabFaultError", "apply_fault", "fault_changes"]

FAULT_FIELDS = ("error_rate", "service_ms", "cv", "capacity_factor")
"""Fields of a version the backends change at run time."""

_RANGES = {name: (low, high, low_ok) for name, (low, high, low_ok) in replica.SETTABLE.items()}
_RANGES["latency_factor"] = (0.0, 1000.0, False)
"""(low, high, low bound inclusive) of every field a fault may name: the backends' own bounds."""


class LabFaultError(LabSpecError):
    """A fault names an unknown version or field, or a value out of range."""


class _HasControl(Protocol):
    @property
    def control_url(self) -> str: ...


def fault_changes(
    spec: LabSpec, service: str, subset: str, assignments: Iterable[str]
) -> dict[str, float]:
    """``FIELD=VALUE`` texts as backend field values, checked against the lab's versions."""
    svc = spec.service(service)
    nominal = next((s for s in svc.subsets if s.name == subset), None)
    if nominal is None:
        raise LabFaultError(
            f"service {service!r} has no version {subset!r} (it has: {', '.join(svc.subset_names)})"
        )
    changes: dict[str, float] = {}
    for text in assignments:
        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep or name not in _RANGES:
            allowed = ", ".join((*FAULT_FIELDS, "latency_factor"))
            if name == "replicas":
                raise LabFaultError(
                    "replicas cannot change while the lab runs (Envoy's endpoints are fixed): "
                    "use capacity_factor instead"
                )
            raise LabFaultError(f"a fault is FIELD=VALUE with FIELD one of {allowed}, got {text!r}")
        try:
            value = float(raw)
        except ValueError:
            raise LabFaultError(f"{name}: not a number: {raw!r}") from None
        lo, hi, lo_ok = _RANGES[name]
        above_low = value >= lo if lo_ok else value > lo
        if not (math.isfinite(value) and above_low and value <= hi):
            opening = "[" if lo_ok else "("
            raise LabFaultError(f"{name} must be within {opening}{lo:g}, {hi:g}], got {raw}")
        if name == "latency_factor":
            value = nominal.service_ms * value
            name = "service_ms"
            if value > _RANGES[name][1]:
                raise LabFaultError(
                    f"latency_factor: {name} would be {value:g} ms, above the backends' "
                    f"{_RANGES[name][1]:g}"
                )
        changes[name] = value
    return changes


def apply_fault(
    lab: _HasControl,
    service: str,
    subset: str,
    changes: Mapping[str, float],
    *,
    ramp_s: float = 0.0,
) -> dict[str, float]:
    """Set `changes` on one version of the running lab; returns the values they replaced
    (pass them back to undo the fault)."""
    state = backend_client.backend_state(lab.control_url)
    current = state["services"][service][subset]
    before = {name: float(current[name]) for name in changes}
    backend_client.set_subset(lab.control_url, service, subset, changes, ramp_s=ramp_s)
    return before
