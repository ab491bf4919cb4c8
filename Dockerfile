# kubetune images, one Dockerfile with two targets:
#   docker build --target operator -t kubetune-operator .   # kopf operator: no Ray, no torch
#   docker build --target trial    -t kubetune-trial .      # Ray head/workers and the driver: Ray Tune, torch, the seeds
# Users bring their own trainables with `FROM kubetune-trial` and `pip install` of their package.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 1000 kubetune \
 && useradd --uid 1000 --gid kubetune --create-home --shell /bin/bash kubetune
WORKDIR /opt/kubetune
COPY pyproject.toml README.md ./
COPY src ./src
COPY trial-image/kubetune_trials ./trial-image/kubetune_trials

FROM base AS operator
# The local package is installed; its dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[operator]"
USER 1000:1000
EXPOSE 8080 9090
ENTRYPOINT ["kubetune", "operator"]

FROM base AS trial
# The CUDA build of torch: it runs on GPU nodes and, slower, on CPU-only ones.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[tune,trials]"
ENV KUBETUNE_DATA_DIR=/home/kubetune/data
USER 1000:1000
WORKDIR /home/kubetune
# KubeRay starts `ray start` in head and worker pods itself; the driver Job runs `kubetune driver`.
CMD ["kubetune", "--help"]
