# digitserve: the digits classifier behind a REST API.
# Build: docker build -t digitserve .
# Run:   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp digitserve
# gRPC too (the Open Inference Protocol, off unless a port is set):
#        docker run --rm -p 8000:8000 -p 8081:8081 -e DIGITSERVE_GRPC_PORT=8081 ... digitserve
# The base is pinned by tag; pin it by digest too where you can resolve one (see docs/deploying.md).

# Build stage: a virtual environment with the pinned dependencies and digitserve, nothing else.
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/digitserve
# Dependencies in their own layer: they change far less often than the code.
COPY requirements/runtime.txt /build/requirements/runtime.txt
RUN /opt/digitserve/bin/pip install --no-deps -r /build/requirements/runtime.txt
COPY pyproject.toml README.md /build/
COPY src/ /build/src/
RUN /opt/digitserve/bin/pip install --no-deps /build \
    && /opt/digitserve/bin/pip uninstall --yes pip setuptools

# Runtime stage: the environment (with the bundled model), an unprivileged user; no pip.
FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/digitserve/bin:$PATH \
    DIGITSERVE_ONNX_CACHE=/opt/digitserve-plans \
    DIGITSERVE_HOST=0.0.0.0 \
    DIGITSERVE_PORT=8000
# The bundled model ships inside the package. To serve your own, mount a model repository
# (<name>/<version>/model.<ext>) and point at it: -v $PWD/models:/models:ro
# -e DIGITSERVE_MODEL_REPOSITORY=/models
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin digitserve \
    && install -d -m 700 -o 10001 -g 10001 /opt/digitserve-plans
COPY --from=build /opt/digitserve /opt/digitserve
WORKDIR /app

# Nothing is written outside /tmp (the Prometheus files of several workers go there): run with a
# read-only root filesystem and a tmpfs on /tmp.
USER 10001:10001
# Each model's runtime (docs/models.md) is chosen and checked once, here, as the user that serves,
# so the bundled models start in milliseconds; plans for mounted models are made at start-up in /tmp.
RUN ["digitserve", "compile"]
# 8000: HTTP (REST, /v1 and /v2); 8081: gRPC, served when DIGITSERVE_GRPC_PORT=8081.
EXPOSE 8000 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["digitserve", "serve"]
