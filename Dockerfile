# medpipe for GPU servers: CUDA-enabled PyTorch base, medpipe on top, non-root, no network needed at run time.
#   docker build -t medpipe .
#   docker run --rm --gpus all --network none -v "$PWD/data:/data" medpipe infer /data/run /data/scans -o /data/masks
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

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

# torch comes from the base image (CUDA build) and satisfies medpipe's torch>=2.6; everything else from PyPI.
RUN pip install --no-cache-dir . \
    && python -c "import medpipe.cli, monai, torch, pydicom, SimpleITK; print('medpipe ready, torch', torch.__version__)"

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin medpipe
USER 1000:1000
WORKDIR /data

ENTRYPOINT ["medpipe"]
CMD ["--help"]
