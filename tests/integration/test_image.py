"""The serving image, built from our Dockerfile and run for real by a Docker engine.

Cases: the image builds from the repository's files (on a local Debian base: no registry is
reachable, so the dependencies come from a wheelhouse the test puts in the build context);
`meshpilot serve --mesh sim` runs in it as user 10001 with a read-only root filesystem, only
/tmp and /var/lib/meshpilot writable; /readyz turns ready, /routes lists the embedded mesh's
three routes, a decision is recorded and its audit log lives on the data volume; nothing can
be written elsewhere and torch is not installed. The image size and the container's memory
are printed (measurements, not asserts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docker_lab import DockerLab, running_docker

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
IMAGE = "meshpilot:test"
CONTAINER = "meshpilot-image-test"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerLab]:
    with running_docker() as lab:
        yield lab


@pytest.fixture(scope="module")
def image(docker: DockerLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    context = tmp_path_factory.mktemp("context")
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    archive = subprocess.run(
        ["tar", "-C", str(REPO), "--null", "-T", "-", "-c"],
        input=tracked,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-C", str(context), "-x"], input=archive, check=True)
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    wheelhouse = ["--wheel-dir", str(context / "wheelhouse")]
    subprocess.run([*wheel, *wheelhouse, str(context), "setuptools>=77"], check=True, timeout=900)
    base = docker.ensure_base_image()
    docker.docker(
        "build",
        "-q",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        "PIP_EXTRA_ARGS=--no-index --find-links /src/wheelhouse",
        "-t",
        IMAGE,
        str(context),
        timeout_s=1800,
    )
    yield IMAGE
    # the engine's data root is a cache of the base image: drop what this run built
    docker.docker("image", "rm", "-f", IMAGE, check=False)
    docker.docker("image", "prune", "-f", check=False)


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def wait_for(what: str, probe: Any, docker: DockerLab, timeout_s: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1.0)
    logs = docker.docker("logs", CONTAINER, check=False)
    pytest.fail(f"{what} not seen in {timeout_s:.0f} s; container log:\n{logs.stdout}{logs.stderr}")


def test_the_image_serves_the_sim_mesh_read_only_as_a_non_root_user(
    docker: DockerLab, image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    docker.docker(
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--read-only",
        "--network",
        "host",  # the API listens on the host's 127.0.0.1 only (the image's default address)
        "--tmpfs",
        "/tmp:rw,size=256m",
        "--tmpfs",
        "/var/lib/meshpilot:rw,size=64m,uid=10001,gid=10001",
        "-e",
        f"MESHPILOT_API__PORT={port}",
        image,
        "serve",
        "--mesh",
        "sim",
        "--tick-s",
        "1",
        "--speed",
        "5",
    )
    try:
        ready = wait_for("/readyz", lambda: get_json(port, "/readyz").get("ready"), docker)
        assert ready is True
        routes = get_json(port, "/routes")
        assert len(routes) == 3 and {r["phase"] for r in routes} <= {"active", "holding"}
        decision = wait_for("a decision", lambda: get_json(port, "/decisions?limit=1"), docker)[0]
        assert decision["route"] in {r["key"] for r in routes}
        assert decision["policy"] == "ppo+supervisor"

        assert docker.docker("exec", CONTAINER, "id", "-u").stdout.strip() == "10001"
        audit = docker.docker("exec", CONTAINER, "ls", "/var/lib/meshpilot").stdout.split()
        assert "decisions.db" in audit and "api-token" in audit
        for path in ("/opt/meshpilot/x", "/x", "/etc/x"):
            assert docker.docker("exec", CONTAINER, "touch", path, check=False).returncode != 0
        no_torch = docker.docker("exec", CONTAINER, "python3", "-c", "import torch", check=False)
        assert no_torch.returncode != 0

        size_mb = int(docker.docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
        memory = docker.docker(
            "stats", "--no-stream", "--format", "{{.MemUsage}}", CONTAINER
        ).stdout.strip()
        with capsys.disabled():
            print(f"\n[image] {image}: {size_mb:.0f} MB; serving container memory {memory}")
    finally:
        docker.docker("rm", "-f", CONTAINER, check=False)
