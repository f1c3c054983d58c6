"""A private Docker engine for the image tests: our own dockerd, our own base image.

Why: the image must be built and run for real, and no registry is reachable here, so
``FROM python:3.11-slim`` cannot be pulled. `DockerLab` starts Debian's dockerd (package
docker.io, installed by ``make system-deps``) on a socket of its own, without touching the
host's networking (``--iptables=false --bridge=none``), and `ensure_base_image` makes a Debian
bookworm base with python3 by debootstrap (package debootstrap) once, then keeps it in the
engine's data root (``~/.cache/meshpilot/docker`` unless ``MESHPILOT_DOCKER_CACHE`` names
another), so later runs start in seconds. ``MESHPILOT_DEBIAN_MIRROR`` picks the mirror.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import require_binary, tail

BASE_IMAGE = "meshpilot-base:bookworm"
"""Debian bookworm minbase with python3, python3-venv and ca-certificates."""
CACHE = Path(
    os.environ.get("MESHPILOT_DOCKER_CACHE", str(Path.home() / ".cache" / "meshpilot" / "docker"))
)
MIRROR = os.environ.get("MESHPILOT_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class DockerLab:
    """A running dockerd and a `docker` client pointed at it."""

    def __init__(self, work: Path) -> None:
        self.dockerd = require_binary("dockerd")
        self.client = require_binary("docker")
        self.work = work
        self.socket = work / "docker.sock"
        self.log = work / "dockerd.log"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.dockerd,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--data-root",
            str(CACHE / "data"),
            "--exec-root",
            str(self.work / "exec"),
            "--pidfile",
            str(self.work / "docker.pid"),
            "-H",
            f"unix://{self.socket}",
        ]
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dockerd exited early:\n{tail(self.log)}")
            if self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"dockerd not ready after {timeout_s:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        """Stop dockerd (its process group) and lift the mounts it leaves in `work`."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        prefix = str(self.work) + "/"
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
        for point in sorted(points, reverse=True):  # the network namespace dockerd bind-mounts
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def docker(
        self, *args: str, check: bool = True, timeout_s: float = 900.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this engine; with `check`, fail loudly with its output."""
        done = subprocess.run(
            [self.client, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args[:3])} ... failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def ensure_base_image(self) -> str:
        """`BASE_IMAGE`, made by debootstrap the first time (about a minute)."""
        if self.docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
            return BASE_IMAGE
        debootstrap = require_binary("debootstrap")
        with tempfile.TemporaryDirectory(dir=self.work) as rootfs:
            subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates",
                    "bookworm",
                    rootfs,
                    MIRROR,
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                [self.client, "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                env=self.env,
                check=True,
                capture_output=True,
                timeout=600,
            )
            tar.wait()
        return BASE_IMAGE


@contextmanager
def running_docker() -> Iterator[DockerLab]:
    """A started `DockerLab` in a short temporary folder (socket paths have a length limit)."""
    with tempfile.TemporaryDirectory(prefix="mpdk-", dir="/tmp") as work:
        lab = DockerLab(Path(work))
        try:
            lab.start()
            yield lab
        finally:
            lab.stop()
