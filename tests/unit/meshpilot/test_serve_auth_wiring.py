"""How `meshpilot serve` checks the bearer of a control (``api.auth``), without a server.

Cases: the default is ``kubernetes`` with ``mesh: k8s`` and ``token`` with ``mesh: sim``;
``--auth`` and the settings choose either explicitly; in Kubernetes mode the reviews go to the
API server of the controller's own kubeconfig context with the configured cache time, and no
token file is created; in token mode the token file is created (owner-only) and its token is
the only one accepted, as caller ``token``.
"""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

from controller.adapters.kube.access import KubernetesAccess
from controller.api.auth import StaticTokenAuth
from controller.settings import load_settings
from meshpilot.cli import build_parser
from meshpilot.commands.serve import _authenticator, settings_overrides
from tests.unit.meshpilot.test_serve_k8s_wiring import k8s_settings


def test_the_default_follows_the_mesh_and_can_be_chosen(tmp_path: Path) -> None:
    assert k8s_settings(tmp_path).auth_mode() == "kubernetes"
    assert load_settings(None).auth_mode() == "token"
    assert k8s_settings(tmp_path, api={"auth": "token"}).auth_mode() == "token"
    assert load_settings(None, api={"auth": "kubernetes"}).auth_mode() == "kubernetes"
    args = build_parser().parse_args(["serve", "--auth", "kubernetes"])
    assert settings_overrides(args)["api"] == {"auth": "kubernetes"}


def test_kubernetes_mode_asks_the_controllers_cluster_and_needs_no_token_file(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    s = k8s_settings(
        tmp_path,
        kube={"context": "controller"},
        api={"token_file": str(token_file), "auth_cache_s": 3},
    )
    with contextlib.ExitStack() as stack:
        auth = _authenticator(s, stack)
        assert isinstance(auth, KubernetesAccess)
        assert auth.api_client.configuration.host == "https://127.0.0.1:2"
        assert auth._callers.ttl_s == 3.0 and auth._verdicts.ttl_s == 3.0
    assert not token_file.exists()


def test_token_mode_creates_the_token_file_and_accepts_only_its_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    s = load_settings(None, api={"token_file": str(token_file)})
    with contextlib.ExitStack() as stack:
        auth = _authenticator(s, stack)
    assert isinstance(auth, StaticTokenAuth)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    caller = auth.authenticate(token)
    assert caller is not None and caller.name == "token"
    assert auth.authenticate(token[:-1]) is None
