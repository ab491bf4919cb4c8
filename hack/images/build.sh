#!/usr/bin/env bash
# Build kubetune's two images from the Dockerfile without a Docker engine or a registry:
#   1. a stand-in for the base image docker.io/library/python:3.11-slim-bookworm, made from Debian's
#      packages with debootstrap (minbase bookworm + python3.11 + pip) and committed into a local
#      buildah store, so that `buildah bud --pull=never` finds it and pulls nothing;
#   2. `buildah bud --target operator|trial` of the Dockerfile (chroot isolation: no daemon, no
#      crun, which fails on this host's hybrid cgroups);
#   3. each image exported as an OCI archive: <cache>/kubetune-operator.tar, kubetune-trial.tar.
#
#   bash hack/images/build.sh [operator|trial|base]...   (default: operator trial)
#
# Idempotent and cached: the base is rebuilt only when its recipe changes; buildah's layer cache makes
# a rebuild after a source change take seconds (the torch layer is rebuilt only when pyproject.toml
# changes, and then installs from a local wheel dir, <cache>/wheels, filled by `pip download` on this
# host and mounted read-only into the build: pip's own cache stays empty behind a proxy that marks its
# responses uncacheable); an archive is re-exported only when its image changed. Installs buildah and
# debootstrap from Debian when they are missing.
#
# Environment:
#   KUBETUNE_IMAGES_DIR   cache dir: buildah store, archives (default <repo>/.cache/images)
#   KUBETUNE_IMAGE_TAG    tag of the built images (default: dev)
#   KUBETUNE_BUILDAH_DRIVER  storage driver: overlay where the kernel lets us mount it (probed), else vfs
#   DEBIAN_MIRROR         mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
hack_begin images/build

CACHE_DIR="${KUBETUNE_IMAGES_DIR:-${REPO_ROOT}/.cache/images}"
TAG="${KUBETUNE_IMAGE_TAG:-dev}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="docker.io/library/python:3.11-slim-bookworm"
# What goes into the stand-in base; a change here rebuilds it.
BASE_PACKAGES="python3.11,python3-pip,python-is-python3,ca-certificates"
BASE_RECIPE="debootstrap minbase bookworm ${BASE_PACKAGES} v1"

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# --- tools ------------------------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install -y ${missing[*]}"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates
fi

lock_cache "${CACHE_DIR}"

# One store of our own, so it never clashes with a system store configured for another driver.
# overlay stores each layer as a diff; vfs (which needs no mount support at all) stores every layer as
# a full copy of the root filesystem: for the trial image (~7 GB) with a dozen steps, ~80 GB. So
# overlay wherever a test mount works, vfs otherwise; the store is per driver.
probe_overlay() {
  local d
  d="$(mktemp -d)"
  mkdir -p "${d}/l" "${d}/u" "${d}/w" "${d}/m"
  if ${SUDO} mount -t overlay overlay -o "lowerdir=${d}/l,upperdir=${d}/u,workdir=${d}/w" "${d}/m" 2>/dev/null; then
    ${SUDO} umount "${d}/m"
    rm -rf "${d}"
    return 0
  fi
  rm -rf "${d}"
  return 1
}
DRIVER="${KUBETUNE_BUILDAH_DRIVER:-}"
if [ -z "${DRIVER}" ]; then
  if probe_overlay; then DRIVER=overlay; else DRIVER=vfs; fi
fi
log "buildah storage driver: ${DRIVER}"
echo "${DRIVER}" > "${CACHE_DIR}/DRIVER"  # for tests/test_images.py
STORE=(--root "${CACHE_DIR}/storage-${DRIVER}" --runroot "${CACHE_DIR}/run-${DRIVER}" --storage-driver "${DRIVER}")
bah() { ${SUDO} buildah "${STORE[@]}" "$@"; }

# Empty when the image does not exist (buildah then exits 125, which pipefail would turn into an exit here).
image_id() { { bah images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null || true; } | head -1; }

# --- the stand-in base image ------------------------------------------------------------
build_base() {
  local t0 have rootfs ctr mnt
  have="$(bah inspect --type image --format '{{index .ImageAnnotations "io.kubetune.base-recipe"}}' "${BASE_IMAGE}" 2>/dev/null || true)"
  if [ "${have}" = "${BASE_RECIPE}" ]; then
    log "base ${BASE_IMAGE} (stand-in) already built"
    return
  fi
  t0=$(date +%s)
  rootfs="${CACHE_DIR}/rootfs"
  ${SUDO} rm -rf "${rootfs}"
  log "debootstrap --variant=minbase bookworm (+ ${BASE_PACKAGES}) from ${MIRROR} (minutes)"
  ${SUDO} debootstrap --variant=minbase --include="${BASE_PACKAGES}" bookworm "${rootfs}" "${MIRROR}" \
    > "${CACHE_DIR}/debootstrap.log" 2>&1 || { tail -30 "${CACHE_DIR}/debootstrap.log" >&2; exit 1; }
  # As in the official image: pip installs into the system Python (Debian marks it externally
  # managed, the official image builds its own Python and does not), and no apt lists or caches.
  ${SUDO} rm -f "${rootfs}"/usr/lib/python3*/EXTERNALLY-MANAGED
  ${SUDO} rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin "${rootfs}"/var/cache/apt/archives/*.deb
  ctr="$(bah from --name kubetune-base-work scratch)"
  mnt="$(bah mount "${ctr}")"
  ${SUDO} cp -a "${rootfs}/." "${mnt}/"
  bah umount "${ctr}" >/dev/null
  bah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 --annotation "io.kubetune.base-recipe=${BASE_RECIPE}" "${ctr}"
  bah commit --rm "${ctr}" "${BASE_IMAGE}" >/dev/null
  ${SUDO} rm -rf "${rootfs}"
  log "base ${BASE_IMAGE} (stand-in) built in $(elapsed "${t0}")"
}

# --- the Dockerfile's targets -----------------------------------------------------------
# pip inside the build reaches the package index through this host's network: give it this host's
# CA bundle (read-only, build time only; it does not end up in the image).
HOST_CA="/etc/ssl/certs/ca-certificates.crt"

# The wheels of every requirement, downloaded here once (a later run fetches only what changed).
# The build finds them through PIP_FIND_LINKS (a build ARG; pip prefers a local wheel of the same
# version); a Docker build without them just uses the index.
WHEELS="${CACHE_DIR}/wheels"
fill_wheels() {
  local t0 py extras
  t0=$(date +%s)
  py="${KUBETUNE_HOST_PYTHON:-${REPO_ROOT}/.venv/bin/python}"
  [ -x "${py}" ] || py=python3
  case "$1" in operator) extras="operator" ;; trial) extras="tune trials cluster" ;; esac
  mkdir -p "${WHEELS}"
  # shellcheck disable=SC2086
  "${py}" "${REPO_ROOT}/hack/images/requirements.py" "${REPO_ROOT}/pyproject.toml" ${extras} > "${WHEELS}/requirements-$1.txt"
  echo "setuptools>=77" >> "${WHEELS}/requirements-$1.txt"
  echo "wheel" >> "${WHEELS}/requirements-$1.txt"
  # Resolving ~150 requirements against the index takes a minute even with every file present: only
  # when the requirements changed.
  if cmp -s "${WHEELS}/requirements-$1.txt" "${WHEELS}/requirements-$1.txt.done"; then
    log "wheels for ${1} are up to date"
    return
  fi
  log "pip download (${1}'s requirements) into ${WHEELS}"
  if PIP_FIND_LINKS="${WHEELS}" "${py}" -m pip download --quiet --dest "${WHEELS}" --requirement "${WHEELS}/requirements-$1.txt"; then
    cp "${WHEELS}/requirements-$1.txt" "${WHEELS}/requirements-$1.txt.done"
  else
    log "pip download failed; the build will use the index"
  fi
  log "wheels ready in $(elapsed "${t0}") ($(du -sh "${WHEELS}" | cut -f1))"
}

build_target() {
  local target="$1" t0 image archive id
  t0=$(date +%s)
  image="localhost/kubetune-${target}:${TAG}"
  archive="${CACHE_DIR}/kubetune-${target}.tar"
  log "buildah bud --target ${target} -t ${image}"
  local previous
  previous="$(image_id "${image}")"
  fill_wheels "${target}"
  local volume=(--volume "${WHEELS}:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
  [ -f "${HOST_CA}" ] && volume+=(--volume "${HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro")
  bah bud --pull=never --layers --isolation chroot --target "${target}" -t "${image}" \
    "${volume[@]}" -f "${REPO_ROOT}/Dockerfile" "${REPO_ROOT}"
  log "built ${image} in $(elapsed "${t0}")"
  id="$(image_id "${image}")"
  # The image this build replaced: its layers (gigabytes when the dependencies changed) go with it;
  # the layer cache of the new one stays.
  if [ -n "${previous}" ] && [ "${previous}" != "${id}" ]; then
    bah rmi "${previous}" >/dev/null 2>&1 || true
  fi
  if [ -f "${archive}" ] && [ -f "${archive}.id" ] && [ "$(cat "${archive}.id")" = "${id}" ]; then
    log "${archive} is up to date"
  else
    t0=$(date +%s)
    rm -f "${archive}" "${archive}.id"
    bah push --quiet "${image}" "oci-archive:${archive}:kubetune-${target}:${TAG}"
    echo "${id}" > "${archive}.id"
    log "exported ${archive} ($(du -h "${archive}" | cut -f1)) in $(elapsed "${t0}")"
  fi
}

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(operator trial)
build_base
for target in "${targets[@]}"; do
  case "${target}" in
    base) ;;
    operator|trial) build_target "${target}" ;;
    *) echo "[images/build] unknown target ${target} (operator, trial, base)" >&2; exit 2 ;;
  esac
done
bah images
log "done in $(elapsed)"
