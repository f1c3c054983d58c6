"""The observe/act contract shared by the simulator, the Gymnasium env and the live controller.

Pure Python + numpy + gymnasium.spaces: nothing here performs I/O or imports an adapter.
"""

from meshcore.errors import (
    ConfigError,
    InvalidWeightsError,
    MeshpilotError,
    PermanentError,
    TemporaryError,
)
from meshcore.features import FeatureSpec, decode, encode, encode_weights
from meshcore.model import (
    WEIGHT_TOTAL,
    Observation,
    RouteRef,
    SubsetStats,
    Weights,
    largest_remainder,
)
from meshcore.ports import Actuator, Clock, Observer, Policy
from meshcore.reward import bad_fraction_estimate, reward

__all__ = [
    "WEIGHT_TOTAL",
    "Actuator",
    "Clock",
    "ConfigError",
    "FeatureSpec",
    "InvalidWeightsError",
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
