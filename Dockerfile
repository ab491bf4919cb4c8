# syntax=docker/dockerfile:1
# kubetune images, one Dockerfile with two targets:
#   docker build --target operator -t kubetune-operator .   # kopf operator: no Ray, no torch
#   docker build --target trial    -t kubetune-trial .      # Ray head/workers and the driver: Ray Tune, torch, the seeds
# Without Docker: bash hack/images/build.sh (buildah, no daemon; OCI archives in .cache/images).
# Users bring their own trainables with `FROM kubetune-trial` and `pip install` of their package.
#
# Layer order keeps rebuilds cheap: the dependencies (read from pyproject.toml alone) come first,
# the source last, so a source change reinstalls only kubetune itself (seconds), not torch. The pip
# cache mount keeps downloads between builds out of the image; PIP_FIND_LINKS (a build ARG, only in
# the build's environment) points pip at a local wheel dir when the builder mounts one
# (hack/images/build.sh does).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --gid 1000 kubetune \
 && useradd --uid 1000 --gid kubetune --create-home --shell /bin/bash kubetune
WORKDIR /opt/kubetune
COPY pyproject.toml hack/images/requirements.py ./

FROM base AS operator
ARG PIP_FIND_LINKS
RUN --mount=type=cache,target=/root/.cache/pip \
    python requirements.py pyproject.toml operator > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY src ./src
COPY trial-image/kubetune_trials ./trial-image/kubetune_trials
# The local package itself; its dependencies are in the layer above.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && rm -rf build src/*.egg-info
USER 1000:1000
EXPOSE 8080 9090
ENTRYPOINT ["kubetune", "operator"]

FROM base AS trial
# wget: KubeRay's readiness and liveness probes of Ray pods call it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*
# The CUDA build of torch: it runs on GPU nodes and, slower, on CPU-only ones. `cluster` is
# ray[default]: the dashboard agent that KubeRay's probes ask whether the node is healthy.
ARG PIP_FIND_LINKS
RUN --mount=type=cache,target=/root/.cache/pip \
    python requirements.py pyproject.toml tune trials cluster > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY src ./src
COPY trial-image/kubetune_trials ./trial-image/kubetune_trials
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && rm -rf build src/*.egg-info trial-image/*.egg-info
ENV KUBETUNE_DATA_DIR=/home/kubetune/data
USER 1000:1000
WORKDIR /home/kubetune
# KubeRay starts `ray start` in head and worker pods itself; the driver Job runs `kubetune driver`.
CMD ["kubetune", "--help"]
