# equiprune server image: `equiprune serve` (gRPC API, job runner, model serving and monitor).
#
#   docker build -t equiprune:latest .                                          # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t equiprune:latest-cuda .     # CUDA torch
#   docker run --rm --shm-size=2g -p 9000:9000 -p 9464:9464 -v equiprune-data:/data equiprune:latest
#   docker run --rm --gpus all --shm-size=2g -p 9000:9000 -p 9464:9464 -v equiprune-data:/data equiprune:latest-cuda
#
# TORCH_VARIANT picks the PyTorch wheel build: `cpu` (default, a small image) or a CUDA tag
# that https://download.pytorch.org/whl/ offers for TORCH_VERSION (cu126, cu128, ...; the
# wheels bundle the CUDA runtime, the host needs only the NVIDIA driver and container toolkit).
# TORCH_INDEX_URL replaces that index (a mirror). torch is installed first, pinned to the exact
# local version TORCH_VERSION+TORCH_VARIANT, so the `server` extra finds it satisfied and pip
# cannot swap in the default index's build. TORCH_VERSION must equal the pin in pyproject.toml
# (tests/deploy/test_deploy_files.py checks).
#
# Arguments after the image name go to `equiprune serve` (e.g. `--allow-import /imports`).
# The first start writes the admin API token to /data/admin.token (docs/tenants.md):
# `docker exec <container> cat /data/admin.token`, then `equiprune --token-file …`.
# The same image runs on KubeRay (deploy/kuberay/rayservice.yaml), which replaces the
# entrypoint with `ray start`.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# wget: KubeRay's default readiness and liveness probes run `wget ... | grep success`.
# tini: an init as PID 1, which reaps orphans and lets `equiprune serve` be an ordinary
# process (its sandboxed workers check that their parent is still the service).
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget tini \
 && rm -rf /var/lib/apt/lists/*

RUN pip install --extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${TORCH_VARIANT}}" \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}"

WORKDIR /opt/equiprune
COPY pyproject.toml README.md ./
COPY service ./service
COPY client ./client
RUN pip install '.[server]' \
 && python -c "import torch, sys; sys.exit(torch.__version__ != '${TORCH_VERSION}+${TORCH_VARIANT}')"

# The service runs as root inside the container on purpose: it parses no client byte itself —
# every model and dataset is handled by a sandboxed worker that it switches to a user id of its
# own (and, with CAP_SYS_ADMIN, to its own network and mount namespaces; without it, a seccomp
# filter that refuses sockets). A non-root service cannot do that and refuses to start unless
# told `--sandbox-isolation limits-only` (docs/security.md, docs/operations.md).
RUN mkdir -m 0700 /data
USER root
VOLUME /data

# gRPC API, Serve's HTTP proxy, the monitor's Prometheus exporter (/metrics).
EXPOSE 9000 8000 9464

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD wget -q -O /dev/null http://127.0.0.1:9464/metrics || exit 1

ENTRYPOINT ["tini", "--", "equiprune", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
