# meshpilot AI_Controller image: the serving path only (numpy policy, no torch).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshpilot ./meshpilot
COPY controller ./controller
COPY agents ./agents
COPY envs ./envs
COPY meshcore ./meshcore
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home meshpilot
COPY --from=build /install /usr/local
USER 10001
ENV MESHPILOT_API__HOST=0.0.0.0 \
    MESHPILOT_STORE__PATH=/home/meshpilot/decisions.db
EXPOSE 8080
ENTRYPOINT ["meshpilot"]
CMD ["serve", "--mesh", "k8s"]
