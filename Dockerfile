# syntax=docker/dockerfile:1
# One image for every kubetasks role; the command picks it:
#   worker    kubetasks worker                     (the default CMD)
#   operator  kopf run -m kubetasks.operator.handlers --standalone --all-namespaces
#   migrate   kubetasks migrate
# Build: docker build -t kubetasks:dev .   Add your actor modules in a derived image (FROM kubetasks:dev,
# COPY your package, pip install it) and list them in KUBETASKS_WORKER__MODULES.
# Any Debian-based Python >= 3.11 image works as PYTHON_IMAGE (CI passes a debootstrapped one: .ci/images.sh).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Extras to install: the dashboard's image adds its web stack with --build-arg KUBETASKS_EXTRAS=operator,dashboard.
ARG KUBETASKS_EXTRAS=operator

# Stage 1: build a wheel and install it with its pinned dependencies into a self-contained venv.
FROM ${PYTHON_IMAGE} AS build
ARG KUBETASKS_EXTRAS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The sources go to a directory that is never Python's working directory: run from /src, the repo's
# operator/ folder would shadow the standard library's `operator` module (`python -m` puts the cwd first).
COPY pyproject.toml README.md /src/kubetasks/
COPY worker/ /src/kubetasks/worker/
COPY operator/ /src/kubetasks/operator/
WORKDIR /opt
RUN python3 -m venv /opt/kubetasks \
    && /opt/kubetasks/bin/pip install --no-cache-dir "/src/kubetasks[${KUBETASKS_EXTRAS}]" \
    && /opt/kubetasks/bin/pip check

# Stage 2: the runtime, without build tools, pip caches or sources; runs as an unprivileged user.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubetasks" \
      org.opencontainers.image.description="Kubernetes-native background tasks on PostgreSQL: operator and worker" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kubetasks \
    && useradd --system --uid 10001 --gid kubetasks --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin kubetasks
COPY --from=build /opt/kubetasks /opt/kubetasks
# Unbuffered logs reach `kubectl logs` at once; no .pyc writes on a read-only root filesystem.
ENV PATH=/opt/kubetasks/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
# 9100: worker /metrics, /healthz, /readyz.  8080: the operator's liveness endpoint (kopf --liveness).
EXPOSE 9100 8080
CMD ["kubetasks", "worker"]
