"""Start a training run from an exported policy file (`--init POLICY.npz`): the inverse of
`agents.training.artifacts.export_npz`.

Why a module of its own: fine-tuning a simulator-trained policy on a live mesh starts from the
`.npz` the controller serves, not from an SB3 checkpoint, so the file's actor and observation
normalizer must go back into a fresh SB3 model — exactly, so that the untouched model exports
to the same actions — and a file the model cannot hold must be refused before any traffic is
touched. The file is checked by `agents.policy_file.load_numpy_policy` first (format, feature
layout, served activation, prior and extension); only then are its arrays copied.

What the file does not hold stays as the config makes it: the critic (fresh), the Gaussian's
log std (`log_std_init`) and the reward normalizer.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.policy_file import load_numpy_policy
from agents.training.artifacts import actor_layers
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

INIT_OBS_COUNT = 1e6
"""Sample count given to the loaded observation statistics: the normalizer keeps updating
during fine-tuning, and with this weight a few thousand live steps barely move it, so the
network keeps reading its inputs on the scale it was trained on."""


def _arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"--init {path}: not a readable policy .npz file ({err})") from err


def _hidden_widths(shapes: list[tuple[int, ...]]) -> list[int]:
    return [int(s[0]) for s in shapes[:-1]]


def check_init(path: str | Path, spec: FeatureSpec, net_arch: tuple[int, ...]) -> None:
    """Refuse, before any work, a policy file that `init_from_npz` could not load into a
    network of hidden layers `net_arch` trained on `spec` (a `ConfigError` naming the file)."""
    p = Path(path)
    load_numpy_policy(p, expected_spec=spec)
    arrays = _arrays(p)
    shapes = [arrays[f"w{i}"].shape for i in range(int(arrays["n_layers"]))]
    if _hidden_widths(shapes) != list(net_arch):
        raise ConfigError(
            f"--init {p}: the file's actor has hidden layers {_hidden_widths(shapes)}, this "
            f"run builds {list(net_arch)}; train with "
            f"--net-arch {' '.join(map(str, _hidden_widths(shapes)))}"
        )


def init_from_npz(
    model: PPO, vecnorm: VecNormalize, path: str | Path, spec: FeatureSpec
) -> dict[str, Any]:
    """Load the actor and observation normalizer of the policy file at `path` into `model`
    and `vecnorm`; returns what was loaded, for config.json.

    Refused with a `ConfigError` naming the file: a file for another feature spec, and a
    network whose layer shapes differ from `model`'s actor (other ``net_arch``). An ensemble
    file initialises from its first member (members are trained alike; fine-tuning one gives
    a single network again).
    """
    import torch

    p = Path(path)
    policy = load_numpy_policy(p, expected_spec=spec)
    members = len(getattr(policy, "members", [policy]))
    arrays = _arrays(p)
    n_layers = int(arrays["n_layers"])
    loaded = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(n_layers)]
    wanted = actor_layers(model)
    have_shapes = [w.shape for w, _ in loaded]
    want_shapes = [w.shape for w, _ in wanted]
    if have_shapes != want_shapes:
        have_hidden, want_hidden = _hidden_widths(have_shapes), _hidden_widths(want_shapes)
        raise ConfigError(
            f"--init {p}: the file's actor has hidden layers {have_hidden} (layer shapes "
            f"{have_shapes}), this run builds {want_hidden} ({want_shapes}); train with "
            f"--net-arch {' '.join(map(str, have_hidden))}"
        )
    rms = vecnorm.obs_rms
    if isinstance(rms, dict) or np.shape(rms.mean) != arrays["obs_mean"].shape:
        raise ConfigError(
            f"--init {p}: the file normalizes {arrays['obs_mean'].shape} observations, the "
            f"training env gives {np.shape(getattr(rms, 'mean', ()))}"
        )
    linears = [
        m
        for m in [*model.policy.mlp_extractor.policy_net, model.policy.action_net]
        if isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        for module, (w, b) in zip(linears, loaded, strict=True):
            module.weight.copy_(torch.as_tensor(w, dtype=module.weight.dtype))
            module.bias.copy_(torch.as_tensor(b, dtype=module.bias.dtype))
    rms.mean = np.asarray(arrays["obs_mean"], dtype=np.float64).copy()
    rms.var = np.asarray(arrays["obs_var"], dtype=np.float64).copy()
    rms.count = INIT_OBS_COUNT
    vecnorm.clip_obs = float(arrays["clip_obs"])
    vecnorm.epsilon = float(arrays["eps"])
    return {
        "init": str(p),
        "init_spec_hash": spec.hash,
        "init_members": members,
        "init_layers": [list(s) for s in have_shapes],
    }
