# syntax=docker/dockerfile:1
# inference-gateway: build from the repository root:
#   docker build -f deploy/docker/inference-gateway.Dockerfile -t agentmesh/inference-gateway .
# uv installs only this service's package (and its workspace dependencies) from uv.lock,
# without dev dependencies, into /opt/venv; the runtime stage copies that venv alone.

FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# The workspace: uv needs every member's pyproject to check the lock, and installs one.
COPY pyproject.toml uv.lock ./
COPY protos/python protos/python
COPY services services
COPY clients/python clients/python
COPY clients/cli clients/cli
RUN uv sync --frozen --no-dev --no-editable --package agentmesh-gateway

FROM python:3.11-slim
RUN groupadd --system --gid 10001 agentmesh \
    && useradd --system --uid 10001 --gid agentmesh --no-create-home --home-dir /nonexistent agentmesh
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTMESH_GATEWAY_HOST=0.0.0.0 \
    AGENTMESH_GATEWAY_PORT=50052 \
    AGENTMESH_GATEWAY_METRICS_PORT=9462
WORKDIR /app
USER 10001:10001
EXPOSE 50052 9462
# SIGTERM goes straight to the service (exec form, PID 1), which drains within GRACE_SECONDS.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentmesh-gateway"]
