"""The serving image, built from our Dockerfile and run for real by a Docker engine.

Cases: the image builds from the repository's files (on a local Debian base: no registry is
reachable, so the dependencies come from a wheelhouse the test puts in the build context);
`meshpilot serve --mesh sim` runs in it as user 10001 with a read-only root filesystem, only
/tmp and /var/lib/meshpilot writable; /readyz turns ready, /routes lists the embedded mesh's
three routes, a decision is recorded and its audit log lives on the data volume; nothing can
be written elsewhere and torch is not installed (although the wheelhouse has it). The
`train` target builds from the same context with torch's CPU build (no CUDA package) and
stable-baselines3, and a tiny `meshpilot train` runs in it as user 10001 with a read-only root
filesystem, writing its run to the mounted /runs. Image sizes, the train target's build time
and the serving container's memory are printed (measurements, not asserts).
"""

from __future__ import annotations

import json
import os
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
TRAIN_IMAGE = "meshpilot-train:test"
CONTAINER = "meshpilot-image-test"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerLab]:
    with running_docker() as lab:
        yield lab


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The work tree's files that git does not ignore (what ``docker build .`` sees, less
    junk), plus a wheelhouse of everything both targets install. torch comes from this
    machine's local CPU wheel (as `make install` gets it); a CUDA build would mean a multi-GB
    wheelhouse and an image that is not the documented one, so it fails here."""
    context = tmp_path_factory.mktemp("context")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = b"\0".join(f for f in listed if f and os.path.lexists(REPO / os.fsdecode(f)))
    archive = subprocess.run(
        ["tar", "-C", str(REPO), "--null", "-T", "-", "-c"],
        input=files,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-C", str(context), "-x"], input=archive, check=True)
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    wheelhouse = ["--wheel-dir", str(context / "wheelhouse")]
    subprocess.run(
        [*wheel, *wheelhouse, f"{context}[train]", "setuptools>=77"], check=True, timeout=900
    )
    torch_wheels = [p.name for p in (context / "wheelhouse").glob("torch-*.whl")]
    assert len(torch_wheels) == 1 and "+cpu-" in torch_wheels[0], torch_wheels
    assert not list((context / "wheelhouse").glob("nvidia_*.whl"))
    return context


def build(docker: DockerLab, context: Path, target: str, tag: str) -> float:
    """``docker build --target TARGET`` offline from the context's wheelhouse; seconds taken."""
    started = time.monotonic()
    docker.docker(
        "build",
        "-q",
        "--target",
        target,
        "--build-arg",
        f"BASE_IMAGE={docker.ensure_base_image()}",
        "--build-arg",
        "PIP_EXTRA_ARGS=--no-index --find-links /src/wheelhouse",
        "-t",
        tag,
        str(context),
        timeout_s=1800,
    )
    return time.monotonic() - started


@pytest.fixture(scope="module")
def image(docker: DockerLab, context: Path) -> Iterator[str]:
    build(docker, context, "serve", IMAGE)
    yield IMAGE
    # the engine's data root is a cache of the base image: drop what this run built
    docker.docker("image", "rm", "-f", IMAGE, check=False)
    docker.docker("image", "prune", "-f", check=False)


@pytest.fixture(scope="module")
def train_image(docker: DockerLab, context: Path) -> Iterator[tuple[str, float]]:
    seconds = build(docker, context, "train", TRAIN_IMAGE)
    yield TRAIN_IMAGE, seconds
    docker.docker("image", "rm", "-f", TRAIN_IMAGE, check=False)
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


def test_the_train_target_trains_on_torch_cpu_read_only_as_a_non_root_user(
    docker: DockerLab,
    train_image: tuple[str, float],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image, build_s = train_image
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, 10001, 10001)
    run = ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,size=512m"]
    versions = docker.docker(
        *run,
        "--entrypoint",
        "python3",
        image,
        "-c",
        "import importlib.metadata as m, json, torch; "
        "print(json.dumps([torch.__version__, torch.cuda.is_available(), "
        "sorted(d.metadata['Name'].lower() for d in m.distributions())]))",
    ).stdout
    torch_version, cuda, installed = json.loads(versions)
    assert torch_version == "2.13.0+cpu" and cuda is False
    assert "stable-baselines3" in {n.replace("_", "-") for n in installed}
    assert not [n for n in installed if n.startswith("nvidia") or n == "triton"]

    assert "--out-dir" in docker.docker(*run, image).stdout  # the default command: train --help
    tiny = ["--members", "1", "--imitation-steps", "0", "--bc-lr", "0", "--n-envs", "1"]
    tiny += ["--n-steps", "64", "--batch-size", "64", "--n-epochs", "1", "--episode-steps", "20"]
    tiny += ["--net-arch", "8", "8", "--total-steps", "64", "--no-progress"]
    trained = docker.docker(
        *run,
        "-v",
        f"{runs}:/runs",
        image,
        "train",
        "steady-50",
        *tiny,
        "--out-dir",
        "/runs",
        timeout_s=600,
    )
    assert "policy.npz" in trained.stdout, trained.stderr[-3000:]
    (policy,) = runs.glob("*/policy.npz")
    assert policy.stat().st_uid == 10001

    size_mb = int(docker.docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
    with capsys.disabled():
        print(f"\n[image] {image}: {size_mb:.0f} MB, built in {build_s:.0f} s (offline)")
