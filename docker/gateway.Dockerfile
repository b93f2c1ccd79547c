# Lungwatch gateway image (FastAPI, `python -m api`, :8000). Also runs the load generator
# (`python -m loadgen`, compose profile "loadgen"), which needs the same dependencies.
# Build context: the repository root (compose.yaml).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, from the hash-pinned lock, so code edits do not reinstall them.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# The gateway imports model.features (the feature schema) and telemetry; loadgen reads data/.
COPY api/ api/
COPY model/ model/
COPY telemetry/ telemetry/
COPY loadgen/ loadgen/
COPY data/ data/

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin lungwatch
USER 10001:10001

ENV LUNGWATCH_HOST=0.0.0.0 \
    LUNGWATCH_PORT=8000
EXPOSE 8000
CMD ["python", "-m", "api"]
