# Lungwatch load generator image (`python -m loadgen`, compose profile "loadgen"): the loadgen
# dependency group, contract/ and the dataset it draws rows from. Build context: the repo root.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_DOWNLOADS=never

WORKDIR /app

# Dependencies first, so code edits do not reinstall them: only this process's dependency
# group, hash-pinned from the one lock (uv.lock).
COPY pyproject.toml uv.lock ./
RUN pip install uv==0.13.8 \
 && uv export --frozen --only-group loadgen --no-emit-project -o /tmp/requirements.txt \
 && pip install --require-hashes --no-deps -r /tmp/requirements.txt \
 && pip uninstall -y uv && rm /tmp/requirements.txt

COPY contract/ contract/
COPY loadgen/ loadgen/
COPY data/ data/

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin lungwatch
USER 10001:10001

ENTRYPOINT ["python", "-m", "loadgen"]
