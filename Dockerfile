# forwardpass serving a model repository mounted at /models, over HTTP (8000) and gRPC (8001).
#
#   docker build -t forwardpass .
#   docker run --rm -p 8000:8000 -p 8001:8001 -v "$PWD/my_models:/models:ro" forwardpass
#
# Settings come as flags after the image name (they replace CMD, so repeat the ones below) or as
# FORWARDPASS_<FIELD> environment variables, e.g. -e FORWARDPASS_WORKERS=4 for four worker
# processes (give the container that many CPUs). KServe mounts its storage at /mnt/models and
# passes its own arguments: see deploy/kserve/servingruntime.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/forwardpass
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install './[grpc]' && rm -rf /opt/forwardpass/src

# Not root: the server needs no privilege, and a model is code it runs.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin forwardpass \
    && mkdir -p /models && chown forwardpass /models
USER 10001
WORKDIR /models

EXPOSE 8000 8001
# Ready when every model asked for is loaded (strict readiness), as Kubernetes probes see it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]

ENTRYPOINT ["forwardpass"]
CMD ["serve", "--model-repository", "/models", "--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001"]
