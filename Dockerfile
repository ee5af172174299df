# Minimal image: the `seen` command on CPU, with the demo model and its bundle (`seen serve` serves them).
# The GPU image, health checks and the compose stack come with the deployment work (see deploy/README.md).
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
COPY demo ./demo
COPY evaluation ./evaluation
RUN pip install --no-cache-dir . && useradd --create-home seen
USER seen
ENTRYPOINT ["seen"]
CMD ["--help"]
