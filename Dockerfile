# myonode DICOM node on a CUDA runtime base. The install steps mirror .ci/run: torch 2.13.0
# first, then the package itself.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/myonode \
    PATH=/opt/myonode/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/myonode \
    && pip install torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY dicom_node ./dicom_node
COPY inference ./inference
COPY reporting ./reporting
COPY config ./config
COPY models ./models
RUN pip install . && rm -rf /src

COPY config/node.container.yaml /etc/myonode/node.yaml

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
CMD ["serve", "--config", "/etc/myonode/node.yaml"]
