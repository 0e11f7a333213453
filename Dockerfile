# medpipe for GPU servers: CUDA-enabled PyTorch base, medpipe on top, non-root, no network needed at run time.
#   docker build -t medpipe .
#   docker run --rm --gpus all --network none -v "$PWD/data:/data" medpipe infer /data/run /data/scans -o /data/masks
#   docker run --rm --gpus all --network none -v "$PWD/data:/data" medpipe batch /data/model.zip /data/scans \
#       -o /data/batch --gpus all            # one worker per GPU, the ledger in /data/batch (docs/batch.md)
# torch 2.9 (CUDA 12.8): MONAI 1.6 needs torch >= 2.8.
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/medpipe
COPY pyproject.toml README.md ./
COPY medpipe ./medpipe
COPY pipelines ./pipelines

# torch comes from the base image (CUDA build): it is pinned as a constraint so pip can never swap it for another
# build; everything else comes from PyPI.
RUN pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraint.txt . \
    && python -c "import medpipe.cli, monai, torch, pydicom, SimpleITK; print('medpipe ready, torch', torch.__version__)"

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin medpipe
USER 1000:1000
WORKDIR /data

ENTRYPOINT ["medpipe"]
CMD ["--help"]
