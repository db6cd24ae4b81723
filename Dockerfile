# syntax=docker/dockerfile:1
# The image of every Parley service but the GPU worker (services/worker/Dockerfile.gpu), from one
# recipe: SERVICE names the service, and the service's ports and health probe come with it.
# skaffold.yaml lists each service's build arguments; by hand, from the repository root:
#   docker build --build-arg SERVICE=session --build-arg PORTS="50051 9101" \
#     --build-arg HEALTHCHECK=grpc:GRPC_PORT --build-arg GRPC_PORT=50051 \
#     --build-arg METRICS_PORT=9101 -t parley-session:dev .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# The web page's libraries (markdown-it, DOMPurify, highlight.js, KaTeX) from the npm registry at
# web/package-lock.json's versions; only the gateway's image keeps them (its static/vendor/).
FROM ${NODE_IMAGE} AS web
WORKDIR /src
COPY web/package.json web/package-lock.json web/
COPY scripts/build-web.sh scripts/
RUN --mount=type=cache,target=/root/.npm bash scripts/build-web.sh /vendor

FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN test -n "${SERVICE}" || { echo "--build-arg SERVICE=gateway|session|cache|worker" >&2; exit 1; }
# A virtual environment without pip: the builder's pip installs into it, and the final image
# copies it whole.
RUN python -m venv --without-pip /opt/venv
# The CPU build of torch from PyTorch's CPU index for the services that need torch, in its own
# layer (it changes far less often than the code). Installed first and pinned by the constraint,
# it satisfies every later requirement on torch, so that PyPI's CUDA build (several GB) is never
# pulled.
ARG TORCH_VERSION=2.13.0
RUN --mount=type=cache,target=/root/.cache/pip \
    case "${SERVICE}" in \
      cache|worker) \
        pip --python /opt/venv/bin/python install --index-url https://download.pytorch.org/whl/cpu \
            "torch==${TORCH_VERSION}" \
        && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt ;; \
      *) touch /tmp/constraints.txt ;; \
    esac
WORKDIR /src
COPY libs/contracts libs/contracts
COPY libs/common libs/common
COPY services/${SERVICE} services/${SERVICE}
COPY --from=web /vendor /src/web-vendor
RUN if [ "${SERVICE}" = gateway ]; then \
      cp -r /src/web-vendor services/gateway/src/parley_gateway/static/vendor; \
    fi
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels ./libs/contracts ./libs/common "./services/${SERVICE}" \
 && pip --python /opt/venv/bin/python install --constraint /tmp/constraints.txt /wheels/*.whl

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG SERVICE
ARG DESCRIPTION="Parley's ${SERVICE} service"
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="parley-${SERVICE}" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.vendor="Parley" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No pip, setuptools or wheel at run time; one unprivileged user (uid 10001, as in the chart).
RUN python -m pip uninstall --yes --no-cache-dir --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid 10001 parley \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin parley \
 && mkdir -p /cache && chown 10001:10001 /cache
COPY --from=builder /opt/venv /opt/venv
# The ports a service listens on (a service ignores the variables that are not its own; none may
# be empty, since a service parses those it reads).
ARG PORT=8080
ARG GRPC_PORT=50051
ARG METRICS_PORT=0
ARG HEALTHCHECK=grpc:GRPC_PORT
# The root filesystem is read-only in the cluster: HOME is /tmp, caches go to /cache (volumes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    PARLEY_SERVICE=${SERVICE} \
    PARLEY_HEALTHCHECK=${HEALTHCHECK} \
    PORT=${PORT} \
    GRPC_PORT=${GRPC_PORT} \
    METRICS_PORT=${METRICS_PORT}
USER 10001:10001
ARG PORTS
EXPOSE ${PORTS}
# The longest start of the four (the worker loads its model); a service healthy sooner is
# reported healthy at its first passing check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-m", "parley_common.image", "healthcheck"]
ENTRYPOINT ["python", "-m", "parley_common.image", "run"]
