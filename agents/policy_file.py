"""PPO policy files: write, check and load the `.npz` a serving policy comes from.

Training (`agents.training.artifacts.export_npz`) exports the actor network of a
stable-baselines3 PPO model, the `VecNormalize` observation statistics and the `FeatureSpec` it
was trained on into one `.npz` file. This module loads that file with ``allow_pickle=False`` (a
model file is data, never code), refuses it when its feature layout does not match, and hands
back the numpy policy of `agents.network` that serves it. Why a module of its own: the file
format and its checks are one concern, shared by serving, training and `meshpilot ensemble`.

File format (every entry a plain numpy array; strings are 0-d unicode arrays):

=================  ==========================================================================
 key               meaning
=================  ==========================================================================
 format_version    int, `FORMAT_VERSION`
 spec_json         `FeatureSpec.to_dict()` as JSON
 spec_hash         `FeatureSpec.hash` of that spec (checked against it on load)
 inputs_hash       `inputs_hash(spec)`: every input the network reads and how its action is
                   read (the spec, the observation extension and its constants, the slot
                   order, the action prior); checked on load. Files written before it existed
                   carry none and are checked by the named entries below only
 activation        hidden-layer activation: `agents.network.ACTIVATION` ("tanh")
 n_layers          number of Linear layers, hidden ones plus the action head
 w{i}, b{i}        Linear layer i: weight (out, in) and bias (out,), as in torch
 obs_mean/obs_var  VecNormalize running mean / variance per observation entry
 clip_obs, eps     VecNormalize ``clip_obs`` and ``epsilon``
 action_prior      `agents.action_prior.ACTION_PRIOR` ("sqrt", see `apply_action_prior`)
 obs_extension     `agents.obs_extensions.OBS_EXTENSION`: the inputs appended to `encode`
                   (see `extend_observation`)
 slot_order        `agents.slot_order.SLOT_ORDER` ("canonical"): the order in which the
                   network reads a route's versions
 action_gain       optional, 1.0 if present (files of older versions carry it)
 metadata_json     free-form JSON (training config, versions) for humans; optional
 n_members         number of networks of an `EnsemblePolicy` (optional, 1); member 0 is the
                   entries above, member j >= 1 the same per-network entries (activation to
                   action_gain, w{i}, b{i}) prefixed ``m{j}.``
=================  ==========================================================================

The activation, prior, extension and slot order entries name what this version serves; a file
that names anything else is refused. The names alone would let a changed extension (another
moving-average weight, say) serve a network trained on the old one; ``inputs_hash`` changes
with any of the values the inputs are computed from.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents import obs_extensions, slot_order
from agents.action_prior import ACTION_PRIOR
from agents.network import ACTIVATION, EnsemblePolicy, NumpyPolicy
from agents.obs_extensions import OBS_EXTENSION
from agents.slot_order import SLOT_ORDER
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec

FORMAT_VERSION = 2
"""Version of the `.npz` layout above; bumped on any incompatible change (2: the network reads
a route's versions in canonical slot order, ``slot_order``)."""

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.npz"
"""The policy shipped with meshpilot (what ``--policy ppo`` serves)."""

_HEADER_KEYS = ("format_version", "spec_json", "spec_hash")
"""Entries a policy file holds once, whatever its number of networks."""
_MEMBER_REQUIRED = (
    "activation",
    "n_layers",
    "obs_mean",
    "obs_var",
    "clip_obs",
    "eps",
    "action_prior",
    "obs_extension",
    "slot_order",
)
"""Entries every network of a file must have (besides its ``w{i}``/``b{i}``)."""
_SERVED = {
    "activation": ACTIVATION,
    "action_prior": ACTION_PRIOR,
    "obs_extension": OBS_EXTENSION,
    "slot_order": SLOT_ORDER,
}
"""The value each of these entries must have: what `NumpyPolicy` computes."""
_REQUIRED = (*_HEADER_KEYS, *_MEMBER_REQUIRED)


def inputs_hash(spec: FeatureSpec) -> str:
    """Stable id (16 hex chars) of what a network served with `spec` reads and how its action is
    read: the `FeatureSpec` hash, the observation extension's name, constants and size, the slot
    order's name and sort keys, and the action prior's name. It changes whenever any of them
    would change a served decision of the same weights."""
    payload = json.dumps(
        {
            "feature_spec": spec.hash,
            "obs_extension": OBS_EXTENSION,
            "trend_features": list(obs_extensions.TREND_FEATURES),
            "ema_features": list(obs_extensions.EMA_FEATURES),
            "ema_alphas": list(obs_extensions.EMA_ALPHAS),
            "extension_size": obs_extensions.extension_size(spec),
            "slot_order": SLOT_ORDER,
            "slot_first_keys": list(slot_order.FIRST_KEYS),
            "action_prior": ACTION_PRIOR,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _text(value: object) -> str:
    return str(np.asarray(value).item()) if np.asarray(value).ndim == 0 else str(value)


def save_npz(
    path: str | Path,
    *,
    spec: FeatureSpec,
    layers: list[tuple[np.ndarray, np.ndarray]],
    obs_mean: np.ndarray,
    obs_var: np.ndarray,
    clip_obs: float,
    eps: float,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a policy file in the format of the module docstring (float32 weights)."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "spec_json": np.asarray(json.dumps(spec.to_dict(), sort_keys=True)),
        "spec_hash": np.asarray(spec.hash),
        "inputs_hash": np.asarray(inputs_hash(spec)),
        "activation": np.asarray(ACTIVATION),
        "n_layers": np.asarray(len(layers), dtype=np.int64),
        "obs_mean": np.asarray(obs_mean, dtype=np.float64),
        "obs_var": np.asarray(obs_var, dtype=np.float64),
        "clip_obs": np.asarray(clip_obs, dtype=np.float64),
        "eps": np.asarray(eps, dtype=np.float64),
        "action_prior": np.asarray(ACTION_PRIOR),
        "obs_extension": np.asarray(OBS_EXTENSION),
        "slot_order": np.asarray(SLOT_ORDER),
        "metadata_json": np.asarray(json.dumps(dict(metadata or {}), sort_keys=True, default=str)),
    }
    for i, (w, b) in enumerate(layers):
        arrays[f"w{i}"] = np.asarray(w, dtype=np.float32)
        arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return out


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"{path}: policy file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ConfigError(f"{path}: not a readable policy .npz file ({err})") from err


_MEMBER_KEYS = (*_MEMBER_REQUIRED, "action_gain")
"""Per-network entries of a policy file; an ensemble's member j >= 1 stores them (and its
``w{i}``/``b{i}``) under the prefix ``m{j}.``, member 0 without a prefix."""


def _is_member_key(key: str) -> bool:
    return key in _MEMBER_KEYS or (key[:1] in "wb" and key[1:].isdigit())


def _member_arrays(arrays: Mapping[str, np.ndarray], path: Path) -> list[dict[str, np.ndarray]]:
    """The per-network arrays of every member of a file, without prefixes."""
    try:
        n = int(arrays["n_members"]) if "n_members" in arrays else 1
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: malformed n_members ({err})") from err
    if not 1 <= n <= 64:
        raise ConfigError(f"{path}: n_members must be 1..64, got {n}")
    members = [{k: v for k, v in arrays.items() if _is_member_key(k)}]
    for j in range(1, n):
        prefix = f"m{j}."
        members.append({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
    return members


def _member_policy(arrays: Mapping[str, np.ndarray], spec: FeatureSpec, source: str) -> NumpyPolicy:
    missing = [k for k in _MEMBER_REQUIRED if k not in arrays]
    if missing:
        raise ConfigError(f"{source}: policy file lacks {', '.join(missing)}")
    for key, served in _SERVED.items():
        if _text(arrays[key]) != served:
            raise ConfigError(
                f"{source}: the network was trained with {key} {_text(arrays[key])!r}; this "
                f"meshpilot serves only {served!r}"
            )
    try:
        n_layers = int(arrays["n_layers"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: malformed n_layers ({err})") from err
    layer_keys = [(f"w{i}", f"b{i}") for i in range(n_layers)]
    absent = [k for pair in layer_keys for k in pair if k not in arrays]
    if absent:
        raise ConfigError(f"{source}: policy file lacks layer arrays {', '.join(absent)}")
    layers = [(arrays[w], arrays[b]) for w, b in layer_keys]
    for name, arr in [("obs_mean", arrays["obs_mean"]), ("obs_var", arrays["obs_var"])] + [
        (k, arrays[k]) for pair in layer_keys for k in pair
    ]:
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise ConfigError(f"{source}: array {name} is not finite floating point")
    try:
        clip_obs = float(arrays["clip_obs"])
        eps = float(arrays["eps"])
        gain = float(arrays["action_gain"]) if "action_gain" in arrays else 1.0
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: malformed normalization or action_gain ({err})") from err
    if gain != 1.0:
        raise ConfigError(f"{source}: action_gain {gain}; this meshpilot serves only 1.0")
    if not (math.isfinite(clip_obs) and clip_obs > 0 and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"{source}: invalid normalization clip {clip_obs} / epsilon {eps}")
    if np.any(arrays["obs_var"] < 0):
        raise ConfigError(f"{source}: obs_var has negative entries")
    return NumpyPolicy(
        spec=spec,
        layers=layers,
        obs_mean=arrays["obs_mean"],
        obs_var=arrays["obs_var"],
        clip_obs=clip_obs,
        eps=eps,
        source=source,
    )


def _checked_spec(
    arrays: Mapping[str, np.ndarray], p: Path, expected_spec: FeatureSpec | None
) -> FeatureSpec:
    if "format_version" not in arrays:
        raise ConfigError(f"{p}: policy file lacks format_version")
    try:
        version = int(arrays["format_version"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{p}: malformed policy metadata ({err})") from err
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{p}: policy format {version}; this meshpilot reads {FORMAT_VERSION}"
            + (
                " (format 1 networks read a route's versions in its own order: retrain)"
                if version == 1
                else ""
            )
        )
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise ConfigError(f"{p}: policy file lacks {', '.join(missing)}")
    try:
        spec_dict = json.loads(_text(arrays["spec_json"]))
        spec = FeatureSpec.from_dict(spec_dict)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{p}: malformed policy metadata ({err})") from err
    stored_hash = _text(arrays["spec_hash"])
    if spec.hash != stored_hash:
        raise ConfigError(
            f"{p}: feature-spec hash mismatch: the file says {stored_hash} but the FeatureSpec it "
            f"carries hashes to {spec.hash}; the file is corrupt or was edited"
        )
    if expected_spec is not None and expected_spec.hash != spec.hash:
        raise ConfigError(
            f"{p}: feature-spec hash mismatch: the model was trained on {spec.hash}, this "
            f"controller encodes observations with {expected_spec.hash}; retrain or export the "
            "model for this feature spec"
        )
    if "inputs_hash" in arrays and _text(arrays["inputs_hash"]) != inputs_hash(spec):
        raise ConfigError(
            f"{p}: inputs hash mismatch: the model was trained on inputs "
            f"{_text(arrays['inputs_hash'])}, this meshpilot computes {inputs_hash(spec)} (its "
            "observation extension, slot order or action prior differ); retrain the model"
        )
    return spec


def load_numpy_policy(
    path: str | Path, *, expected_spec: FeatureSpec | None = None
) -> NumpyPolicy | EnsemblePolicy:
    """Load and check a policy file; every problem is a `ConfigError` naming the file.

    The file's `FeatureSpec` must hash to the hash stored next to it (else the file was edited
    or corrupted) and, when `expected_spec` is given, equal the caller's layout (else the model
    would read observations it was not trained on). A file with ``n_members`` > 1 is an
    `EnsemblePolicy`.
    """
    p = Path(path)
    return _policy_from(_read_arrays(p), p, expected_spec)


def _policy_from(
    arrays: Mapping[str, np.ndarray], p: Path, expected_spec: FeatureSpec | None
) -> NumpyPolicy | EnsemblePolicy:
    spec = _checked_spec(arrays, p, expected_spec)
    policies = [
        _member_policy(m, spec, str(p) if j == 0 else f"{p} (member {j})")
        for j, m in enumerate(_member_arrays(arrays, p))
    ]
    return policies[0] if len(policies) == 1 else EnsemblePolicy(policies)


def save_ensemble_npz(
    path: str | Path, members: Sequence[str | Path], *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Combine policy files (single networks or ensembles) into one ensemble file.

    Every member is loaded and checked first, and all must share one feature spec, so a
    combined file never holds a network the controller would refuse alone.
    """
    if len(members) < 2:
        raise ConfigError("an ensemble needs at least two policy files")
    nets: list[dict[str, np.ndarray]] = []
    spec_hashes: set[str] = set()
    head: dict[str, np.ndarray] = {}
    for src in members:
        src_path = Path(src)
        arrays = _read_arrays(src_path)
        spec = _policy_from(arrays, src_path, None).spec  # every check a single file gets
        spec_hashes.add(spec.hash)
        head = head or {k: arrays[k] for k in _HEADER_KEYS}
        nets.extend(_member_arrays(arrays, src_path))
    if len(spec_hashes) != 1:
        raise ConfigError(
            f"ensemble members were trained on different feature specs: {sorted(spec_hashes)}"
        )
    out_arrays: dict[str, np.ndarray] = {**head, **nets[0]}
    # Every member passed the loader's checks against this meshpilot's inputs (one spec).
    out_arrays["inputs_hash"] = np.asarray(inputs_hash(spec))
    for j, net in enumerate(nets[1:], start=1):
        out_arrays.update({f"m{j}.{k}": v for k, v in net.items()})
    out_arrays["n_members"] = np.asarray(len(nets), dtype=np.int64)
    meta = {"ensemble_of": [str(m) for m in members], **dict(metadata or {})}
    out_arrays["metadata_json"] = np.asarray(json.dumps(meta, sort_keys=True, default=str))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.savez_compressed(fh, **out_arrays)  # type: ignore[arg-type]
    return out


def load_ppo_policy(
    path: str | None, *, expected_spec: FeatureSpec | None = None
) -> NumpyPolicy | EnsemblePolicy:
    """`--policy ppo[:PATH]`: the model at `path`, or the shipped default when `path` is None.

    `expected_spec` defaults to ``FeatureSpec()``, the layout the controller encodes with.
    """
    target = DEFAULT_MODEL if path is None else Path(path)
    return load_numpy_policy(target, expected_spec=expected_spec or FeatureSpec())
