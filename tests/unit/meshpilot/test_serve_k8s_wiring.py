"""`meshpilot serve --mesh k8s` wiring: the watch cache, parallel writes, the client pool and
the kubeconfig context (the file's current one unless `kube.context` names another; an
unknown one is a clear error).

No server is contacted: building the actuator, observer and loop connects to nothing (the
watch cache starts on the first read), so a kubeconfig pointing at a closed port is enough.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

from controller.settings import Settings, load_settings
from meshcore import ConfigError
from meshpilot.commands.serve import build_loop


def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://127.0.0.1:1"}},
                    {"name": "d", "cluster": {"server": "https://127.0.0.1:2"}},
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u"}},
                    {"name": "controller", "context": {"cluster": "d", "user": "u"}},
                ],
                "current-context": "x",
            }
        )
    )
    return path


def k8s_settings(
    tmp_path: Path, *, kube: dict[str, object] | None = None, **extra: object
) -> Settings:
    """`mesh: k8s` settings for one route, a kubeconfig and an audit file in `tmp_path`."""
    return load_settings(
        None,
        mesh="k8s",
        policy="proportional",
        routes=[{"virtual_service": "reviews", "route": "primary"}],
        store={"path": str(tmp_path / "audit.db")},
        kube={"kubeconfig": str(kubeconfig(tmp_path)), **(kube or {})},
        **extra,
    )


def test_defaults_read_from_the_watch_cache_and_write_in_parallel(tmp_path: Path) -> None:
    s = k8s_settings(tmp_path)
    assert s.kube.watch_cache is True and s.max_parallel_writes == 8
    with contextlib.ExitStack() as stack:
        loop, _ = build_loop(s, stack)
        actuator = loop.actuator
        assert loop.max_parallel_writes == 8
        assert getattr(actuator, "watch_cache", None) is True
        pool = actuator.api_client.configuration.connection_pool_maxsize  # type: ignore[attr-defined]
        assert pool >= loop.max_parallel_writes + 1  # writers + the watch


def test_cache_off_and_serial_writes_can_be_chosen(tmp_path: Path) -> None:
    s = k8s_settings(tmp_path, kube={"watch_cache": False}, max_parallel_writes=1)
    with contextlib.ExitStack() as stack:
        loop, _ = build_loop(s, stack)
        assert loop.max_parallel_writes == 1
        assert getattr(loop.actuator, "watch_cache", None) is False


def test_the_kube_context_setting_picks_the_controllers_context(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        loop, _ = build_loop(k8s_settings(tmp_path), stack)
        host = loop.actuator.api_client.configuration.host  # type: ignore[attr-defined]
        assert host == "https://127.0.0.1:1"  # the file's current context
    s = k8s_settings(tmp_path, kube={"context": "controller"})
    with contextlib.ExitStack() as stack:
        loop, _ = build_loop(s, stack)
        host = loop.actuator.api_client.configuration.host  # type: ignore[attr-defined]
        assert host == "https://127.0.0.1:2"


def test_an_unknown_kube_context_is_a_clear_config_error(tmp_path: Path) -> None:
    s = k8s_settings(tmp_path, kube={"context": "nope"})
    with contextlib.ExitStack() as stack, pytest.raises(ConfigError, match="nope"):
        build_loop(s, stack)
