# meshpilot images. The default target, `serve` (the AI_Controller): `meshpilot serve` with the
# numpy policy, no torch. The `train` target: `meshpilot train` with torch (CPU build) and
# stable-baselines3.
#
#   docker build --target serve -t meshpilot .
#   docker build --target train -t meshpilot-train .
#   docker build --build-arg BASE_IMAGE=my-registry/python:3.11 --target serve -t meshpilot .
#
# BuildKit builds only the stages a target needs; the legacy builder (Docker without buildx)
# builds every stage before the target, so name `--target serve` to keep torch out of the build.
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11) and its venv module.
# PIP_EXTRA_ARGS: extra pip options, e.g. "--no-index --find-links /src/wheelhouse" to install
# from wheels put in the build context instead of an index (an offline build).
# TORCH_INDEX_URL (train): an extra index with CPU-only torch wheels, so pip takes torch's
# +cpu build (~190 MB) rather than PyPI's default, which pulls ~2 GB of CUDA packages.
# At run time only /var/lib/meshpilot (audit log, API token) and /tmp need to be writable:
# the serving image runs as a non-root user with a read-only root filesystem.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_EXTRA_ARGS=""
COPY . /src
RUN python3 -m venv /opt/meshpilot \
    && /opt/meshpilot/bin/pip install --no-cache-dir --disable-pip-version-check \
       ${PIP_EXTRA_ARGS} /src

FROM ${BASE_IMAGE} AS serve
COPY --from=build /opt/meshpilot /opt/meshpilot
ENV PATH=/opt/meshpilot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    MESHPILOT_STORE__PATH=/var/lib/meshpilot/decisions.db \
    MESHPILOT_API__TOKEN_FILE=/var/lib/meshpilot/api-token
VOLUME ["/var/lib/meshpilot", "/tmp"]
WORKDIR /var/lib/meshpilot
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["meshpilot"]
CMD ["serve", "--mesh", "k8s"]

# ---- training: `meshpilot train`, torch CPU + stable-baselines3 ------------------------------
FROM build AS build-train
ARG PIP_EXTRA_ARGS=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN /opt/meshpilot/bin/pip install --no-cache-dir --disable-pip-version-check \
       --extra-index-url ${TORCH_INDEX_URL} ${PIP_EXTRA_ARGS} "/src[train]"

# Runs as user 10001: mount a directory it can write at /runs (e.g. `--user "$(id -u)"`).
FROM ${BASE_IMAGE} AS train
COPY --from=build-train /opt/meshpilot /opt/meshpilot
ENV PATH=/opt/meshpilot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/runs", "/tmp"]
WORKDIR /runs
USER 10001:10001
ENTRYPOINT ["meshpilot"]
CMD ["train", "--help"]

# The default target (the last stage) is the serving image.
FROM serve
