"""The observe/act contract shared by the simulator, the Gymnasium env and the live controller.

Pure Python + numpy + gymnasium.spaces: nothing here performs I/O or imports an adapter.
"""

from controller.core.errors import ConfigError, MeshpilotError, PermanentError, TemporaryError
from controller.core.features import FeatureSpec, decode, encode, encode_weights
from controller.core.model import (
    WEIGHT_TOTAL,
    Observation,
    RouteRef,
    SubsetStats,
    Weights,
    largest_remainder,
)
from controller.core.ports import Actuator, Clock, Observer, Policy
from controller.core.reward import bad_fraction_estimate, reward

__all__ = [
    "WEIGHT_TOTAL",
    "Actuator",
    "Clock",
    "ConfigError",
    "FeatureSpec",
    "MeshpilotError",
    "Observation",
    "Observer",
    "PermanentError",
    "Policy",
    "RouteRef",
    "SubsetStats",
    "TemporaryError",
    "Weights",
    "bad_fraction_estimate",
    "decode",
    "encode",
    "encode_weights",
    "largest_remainder",
    "reward",
]
