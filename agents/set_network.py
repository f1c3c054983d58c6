"""The set actor: one network for any route of 1..max_subsets versions, whatever their order.

Why a module of its own: the flat MLP reads slot i's inputs with weights of its own, so it
learns the slots of the routes it was trained on (scenarios list their biggest version first)
and a version's treatment depends on where it is listed. The set actor scores every version
with the same weights, from the version's own inputs and a summary of the whole route:

    h_i = encoder([slot_i inputs, route inputs])     shared tanh layers, one row per slot
    c   = mean_i h_i                                 the route's context (all slots)
    a_i = head([h_i, c])                             one tanh layer, then one output

so reordering a route's versions reorders the actions in the same way (tested), and the
weights are the same for 2 and for 8 versions. Absent slots (all-zero inputs) take part in
the mean as they are: their summary depends only on the route inputs and tells the context how
many slots are filled; `decode` masks their actions. numpy only: the controller serves it
without torch (`agents.training.set_policy` is its torch twin for training).

Layers are stored like the MLP's, (out, in) weight and (out,) bias each: the encoder layers in
order, then the head's hidden layer (input 2 x the encoder's width), then its output (1 row).
"""

from __future__ import annotations

import numpy as np

from agents.obs_extensions import slot_layout
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec

ARCHITECTURE = "set"
"""The name policy files give this network (``architecture``)."""


def set_input_width(spec: FeatureSpec) -> int:
    """Inputs of the encoder's first layer: one slot's inputs and the route's."""
    slots, route = slot_layout(spec)
    return int(slots.shape[1] + route.size)


def slot_inputs(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Rows of extended (normalized) vectors `x`, shape (n, width) -> (n, slots, inputs):
    each slot's inputs followed by the route's."""
    slots, route = slot_layout(spec)
    per_slot = x[:, slots]
    shared = np.broadcast_to(x[:, None, route], (x.shape[0], slots.shape[0], route.size))
    return np.concatenate([per_slot, shared], axis=2)


def tie_statistics(
    mean: np.ndarray, var: np.ndarray, spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Normalization statistics shared across slots: every slot's input f gets the mean and
    variance of input f pooled over all slots (route inputs keep their own). Normalizing slot
    by slot with statistics of their own would tell the set actor which slot it reads."""
    slots, _ = slot_layout(spec)
    mean = np.asarray(mean, dtype=np.float64).copy()
    var = np.asarray(var, dtype=np.float64).copy()
    pooled_mean = mean[slots].mean(axis=0)
    pooled_var = (var[slots] + (mean[slots] - pooled_mean) ** 2).mean(axis=0)
    mean[slots] = pooled_mean
    var[slots] = pooled_var
    return mean, var


def check_set_layers(
    layers: list[tuple[np.ndarray, np.ndarray]], spec: FeatureSpec, source: str
) -> None:
    """Raise `ConfigError` naming `source` unless `layers` are a set actor for `spec`."""
    if len(layers) < 3:
        raise ConfigError(
            f"{source}: a set actor has encoder layers, a head layer and an output layer; "
            f"the file has {len(layers)} layers"
        )
    width = set_input_width(spec)
    for i, (w, b) in enumerate(layers):
        expected = 2 * layers[i - 1][0].shape[0] if i == len(layers) - 2 else width
        if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[1] != expected:
            raise ConfigError(
                f"{source}: set layer {i} has shape {w.shape}/{b.shape}, expected input {expected}"
            )
        width = w.shape[0]
    if width != 1:
        raise ConfigError(f"{source}: the set actor's output layer has {width} rows, not 1")


def set_mean_action(
    layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, spec: FeatureSpec
) -> np.ndarray:
    """The set actor on normalized extended vectors `x` (shape (width,) or (n, width)) ->
    Gaussian mean per slot, shape (max_subsets,) or (n, max_subsets)."""
    rows = np.atleast_2d(np.asarray(x, dtype=np.float64))
    h = slot_inputs(rows, spec)
    *encoder, (wh, bh), (wo, bo) = layers
    for w, b in encoder:
        h = np.tanh(h @ w.T + b)
    context = np.broadcast_to(h.mean(axis=1, keepdims=True), h.shape)
    z = np.tanh(np.concatenate([h, context], axis=2) @ wh.T + bh)
    out = (z @ wo.T + bo)[:, :, 0]
    return out[0] if np.asarray(x).ndim == 1 else out
