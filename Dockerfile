# equiprune server image. The engine (and, later, the service) come from the `server` extra.
#
#   docker build -t equiprune .
#   docker build --build-arg TORCH_INDEX_URL=<your PyTorch CPU or CUDA wheel index> -t equiprune .
#
# torch is pinned exactly (2.13.0) in pyproject.toml. Without TORCH_INDEX_URL pip takes the
# default index's build, which on Linux is the CUDA one; point it at a CPU wheel index for a
# small CPU image, or at a CUDA index matching your driver for the GPU variant.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/equiprune

COPY pyproject.toml README.md ./
COPY service ./service
COPY client ./client
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} '.[server]'

RUN useradd --create-home equiprune
USER equiprune
ENTRYPOINT ["equiprune-engine"]
CMD ["--help"]
