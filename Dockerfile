# The gateway's container image: docker build -t holysheep-gateway .
#
# Two stages: `build` installs the gateway and its runtime dependencies (pyproject's `dependencies`, no
# extras: no development tools, no OpenTelemetry) into a virtual environment; the final stage is a clean
# Python image with only that environment, run by an unprivileged user. Configure it with a mounted config
# file (--config /etc/gateway/gateway.yaml, see deploy/k8s/) and the environment; without one it serves the
# offline demo model. Listens on 0.0.0.0:50051 (GATEWAY_LISTEN). SIGTERM drains (grace_period_s).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/gateway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
COPY generated ./generated
RUN /opt/gateway/bin/pip install .

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/gateway /opt/gateway
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_LISTEN=0.0.0.0:50051 \
    GATEWAY_TARGET=127.0.0.1:50051
USER 10001:10001
EXPOSE 50051
STOPSIGNAL SIGTERM
# The gRPC health service, asked with the project's own client: exit 0 only when SERVING (NOT_SERVING while
# draining). With TLS on the port, add --ca-cert FILE instead of --plaintext. Kubernetes ignores this and
# uses the Deployment's grpc probes instead.
HEALTHCHECK --interval=10s --timeout=8s --start-period=15s --retries=3 \
    CMD ["holysheep-client", "health", "--plaintext", "--timeout", "5"]
ENTRYPOINT ["holysheep-gateway"]
