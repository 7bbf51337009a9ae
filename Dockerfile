# myonode DICOM node on a CUDA runtime base. The install steps mirror .ci/run: torch 2.13.0
# first, then the package itself. torch comes from PyTorch's wheel index for the base image's
# CUDA version: change CUDA_VERSION and TORCH_CUDA together (12.8.x <-> cu128).
ARG CUDA_VERSION=12.8.1
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
ARG TORCH_CUDA=cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/myonode \
    PATH=/opt/myonode/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/myonode \
    && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_CUDA}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY dicom_node ./dicom_node
COPY inference ./inference
COPY reporting ./reporting
COPY config ./config
COPY models ./models
RUN pip install . && rm -rf /src

# The image's own settings, then the site's file over them: a site mounts its node.yaml over
# /etc/myonode/node.yaml and names only what it changes (both files are merged over the
# embedded defaults, in this order).
COPY config/node.container.yaml /usr/share/myonode/node.container.yaml
RUN mkdir -p /etc/myonode \
    && printf '%s\n' '# Site settings: mount a node.yaml here; it is merged over the image defaults.' \
        > /etc/myonode/node.yaml

RUN useradd --create-home --uid 10001 myonode \
    && mkdir -p /data && chown 10001 /data
USER 10001
WORKDIR /home/myonode
VOLUME ["/data"]

# DICOM, then Prometheus metrics and the health check.
EXPOSE 11112 9090

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]

ENTRYPOINT ["myonode"]
CMD ["serve", "--config", "/usr/share/myonode/node.container.yaml", "--config", "/etc/myonode/node.yaml"]
