# syntax=docker/dockerfile:1
# The tinygpt HTTP service: `tinygpt serve` on the registry's champion, port 8000.
#   docker build -t tinygpt .
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow.example:5000 tinygpt
# tests/code/test_dockerfile.py checks the paths, make target, command and port below.
FROM python:3.11-slim

# make, to install the way the project does (`make setup`); nothing needs compiling.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# What `make setup` needs (the lock, the package metadata and README it reads) and what the
# service imports and reads at run time (the packages, cli.py, params.yaml). Nothing else:
# no tests, benchmarks, data or stores.
COPY Makefile requirements.lock pyproject.toml README.md cli.py params.yaml ./
COPY gpt ./gpt
COPY registry ./registry
COPY tasks ./tasks
COPY flows ./flows
COPY serve ./serve
COPY stack ./stack

# The lock pins torch==2.13.0+cpu, which only PyTorch's CPU index serves (no CUDA wheels in
# the image); pass --build-arg PIP_EXTRA_INDEX_URL=... for a mirror. The cache mount keeps
# downloaded wheels between builds, so a code change does not download torch again.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    make setup

# Run as an unprivileged user. It owns /app itself (not the code or .venv under it) because
# the service writes its local state there: .prefect/, .tinygpt/, uploads/, mlflow/.
RUN useradd --create-home --uid 10001 tinygpt && chown tinygpt /app
USER tinygpt

# .venv/bin first: `tinygpt` is the console script `make setup` installed. The store defaults
# to the project's embedded one (empty in a fresh container: /health says 503 until a
# registry answers); point MLFLOW_TRACKING_URI at the team's MLflow server with `docker run -e`.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db

EXPOSE 8000

# 0.0.0.0: reachable through `docker run -p`; the default --model is the registry's champion
# (models:/<registry.model_name>@champion, params.yaml), followed as it moves.
CMD ["tinygpt", "serve", "--host", "0.0.0.0", "--port", "8000"]
