# meshpilot AI_Controller image: the serving path only (numpy policy, no torch).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY agents ./agents
COPY envs ./envs
COPY scenarios ./scenarios
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home meshpilot
COPY --from=build /install /usr/local
COPY scenarios /usr/local/lib/python3.11/site-packages/scenarios
USER 10001
ENV MESHPILOT_API__HOST=0.0.0.0 \
    MESHPILOT_STORE__PATH=/home/meshpilot/decisions.db
EXPOSE 8080
ENTRYPOINT ["meshpilot"]
CMD ["serve", "--mesh", "k8s"]
