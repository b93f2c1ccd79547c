# Lungwatch model server image (instrumented MLflow scoring app, `python -m model.serve`, :8080).
# The model is trained while the image is built, from the dataset in the repository, so the
# image carries its own registry (sqlite + artifacts under /app/mlruns) and never depends on
# a model registry that may not exist where it runs. The server follows the aliases of that
# store (hot reload); an MLFLOW_TRACKING_URI set at run time to a shared tracking server
# (deploy/components/registry, what a rollout over several replicas needs) replaces it.
# Build context: the repository root.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_DOWNLOADS=never

WORKDIR /app

# Only this process's dependency group (model server and training), hash-pinned from uv.lock.
COPY pyproject.toml uv.lock ./
RUN pip install uv==0.13.8 \
 && uv export --frozen --only-group model --no-emit-project -o /tmp/requirements.txt \
 && pip install --require-hashes --no-deps -r /tmp/requirements.txt \
 && pip uninstall -y uv && rm /tmp/requirements.txt

COPY contract/ contract/
COPY telemetry/ telemetry/
COPY model/ model/
COPY data/ data/
# Training logs the model card with the run.
COPY docs/model-card.md docs/model-card.md

# MLflow's sqlite store keeps artifacts under ./mlruns of the working directory (/app).
# Telemetry export is off while training: no Collector exists at build time.
ENV MLFLOW_TRACKING_URI=sqlite:////app/mlruns/mlruns.db
RUN mkdir -p /app/mlruns \
 && OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none python -m model.train --if-missing

# MLflow opens the sqlite store read-write (schema check), so the runtime user owns it.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin lungwatch \
 && chown -R 10001:10001 /app/mlruns
USER 10001:10001

ENV LUNGWATCH_MODEL_SERVER_HOST=0.0.0.0 \
    LUNGWATCH_MODEL_SERVER_PORT=8080 \
    LUNGWATCH_MODEL_SERVER_MODEL_URI=models:/lungwatch-risk@champion
EXPOSE 8080
CMD ["python", "-m", "model.serve"]
