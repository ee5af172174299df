# Minimal image: the `seen` command on CPU. The GPU image, the demo model and the service come with
# the deployment work (see deploy/README.md).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install --no-cache-dir "${TORCH_SPEC}" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY seen ./seen
COPY calibration ./calibration
COPY service ./service
COPY cli ./cli
RUN pip install --no-cache-dir . && useradd --create-home seen
USER seen
ENTRYPOINT ["seen"]
CMD ["--help"]
