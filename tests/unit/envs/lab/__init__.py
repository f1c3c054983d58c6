"""Lab tests. `running_backend` starts `python -m envs.lab.backend` on free ports for a test
module and kills its process group afterwards, whatever happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from envs.lab.backend_client import wait_backend_ready
from envs.lab.backend_config import BackendConfig
from tests.helpers import free_port, tail

REPO = Path(__file__).resolve().parents[4]


def backend_config(services: dict[str, dict[str, dict[str, Any]]], seed: int = 0) -> BackendConfig:
    """A config with `replicas` free ports per subset: {service: {subset: {field: value}}}."""
    return BackendConfig.model_validate(
        {
            "seed": seed,
            "control_port": free_port(),
            "services": [
                {
                    "service": service,
                    "subsets": [
                        {
                            "name": name,
                            **{k: v for k, v in fields.items() if k != "replicas"},
                            "ports": [free_port() for _ in range(fields.get("replicas", 1))],
                        }
                        for name, fields in subsets.items()
                    ],
                }
                for service, subsets in services.items()
            ],
        }
    )


@contextmanager
def running_backend(config: BackendConfig, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The backend serving `config`, ready; its process group is killed on exit."""
    path = workdir / "backend.json"
    path.write_text(config.to_json())
    log = workdir / "backend.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "envs.lab.backend", "--config", str(path)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_backend_ready(config.control_url, 15.0)
        except Exception as err:
            raise RuntimeError(f"backend did not start: {err}\n{tail(log)}") from err
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
