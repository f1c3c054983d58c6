# meshpilot AI_Controller image: `meshpilot serve` with the numpy policy (no torch).
#
#   docker build -t meshpilot .
#   docker build --build-arg BASE_IMAGE=my-registry/python:3.11 -t meshpilot .
#
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11) and its venv module.
# PIP_EXTRA_ARGS: extra pip options, e.g. "--no-index --find-links /src/wheelhouse" to install
# from wheels put in the build context instead of an index.
# At run time only /var/lib/meshpilot (audit log, API token) and /tmp need to be writable:
# the image runs as a non-root user with a read-only root filesystem.
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
