# myonode on a CUDA runtime base. The install steps mirror .ci/run: torch 2.13.0 first,
# then the package itself. (The node's ports, data volume and health check arrive with
# `myonode serve`.)
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
COPY dicom_node ./dicom_node
COPY inference ./inference
COPY reporting ./reporting
COPY config ./config
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 myonode
USER 10001
WORKDIR /home/myonode

ENTRYPOINT ["myonode"]
CMD ["--help"]
