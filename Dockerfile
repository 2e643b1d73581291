# tailsampler container image.
#
#   docker build -t tailsampler .
#   docker run --rm --read-only -p 4317:4317 -p 4318:4318 -p 8888:8888 tailsampler
#
# The default config (docker/config.yaml) receives OTLP on 4317 (gRPC) and 4318 (HTTP),
# serves /healthz, /readyz and /metrics on 8888, and writes kept traces to stdout.
# Point it at a real backend with environment variables, for example
#   -e TAILSAMPLER_EXPORTER__PROTOCOL=grpc -e TAILSAMPLER_EXPORTER__ENDPOINT=http://collector:4317
# or mount your own files over /etc/tailsampler/.

# ---- builder: turn the project into a wheel ----------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler lets the build compile the receive path (Cython, mypyc: setup.py); the runtime stage then
# installs a wheel for this very base image. Without one the build falls back to pure Python.
# Debian's toolchain packages are not version-pinned: the base image pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# --build-arg TAILSAMPLER_NO_COMPILE=1 builds a pure-Python wheel (faster, same behaviour).
ARG TAILSAMPLER_NO_COMPILE=0

WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps -w /dist .

# ---- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="tailsampler" \
      org.opencontainers.image.description="Tail-based sampling proxy for OpenTelemetry traces" \
      org.opencontainers.image.licenses="Apache-2.0"

# Nothing is written at run time: no bytecode caches, unbuffered logs, so the container
# runs with a read-only root filesystem.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Installing the wheel by path pins the project to exactly what the builder produced; pip
# compiles bytecode at install time, so imports never need to write.
COPY --from=builder /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/tailsampler-*.whl \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 tailsampler \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin tailsampler

COPY docker/config.yaml /etc/tailsampler/config.yaml
COPY policies/default.yaml /etc/tailsampler/policies.yaml

# Numeric uid:gid so Kubernetes can verify runAsNonRoot.
USER 10001:10001

# 4317 OTLP/gRPC, 4318 OTLP/HTTP, 8888 admin (/healthz, /readyz, /metrics)
EXPOSE 4317 4318 8888

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=2)"]

ENTRYPOINT ["tailsampler", "run", "--config", "/etc/tailsampler/config.yaml"]
