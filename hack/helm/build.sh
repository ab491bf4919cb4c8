#!/usr/bin/env bash
# Build (or reuse) `helm`, compiled from the helm.sh/helm/v3 Go module (fetched through the Go
# module proxy) at a pinned version, cached in <repo>/.cache/helm/bin. The chart tests
# (tests/test_chart.py) run it; so can you: .cache/helm/bin/helm lint charts/kubetune
# Also copies the Prometheus Operator's ServiceMonitor and PodMonitor CRDs, from its Go module at a
# pinned version, into <repo>/.cache/helm/crds: the test API server validates the chart's monitors.
#
# Idempotent: when the cached binary exists and was built for the requested version, nothing
# is rebuilt.
#
# Environment:
#   KUBETUNE_HELM_VERSION   Helm version to build (default below)
#   KUBETUNE_HELM_DIR       cache dir (default <repo>/.cache/helm)
#   GO                      go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
hack_begin helm/build

HELM_VERSION="${KUBETUNE_HELM_VERSION:-v3.22.0}"
PROMETHEUS_OPERATOR_VERSION="${KUBETUNE_PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"

CACHE_DIR="${KUBETUNE_HELM_DIR:-${REPO_ROOT}/.cache/helm}"
BIN_DIR="${CACHE_DIR}/bin"
STAMP="${BIN_DIR}/VERSION"

# One build at a time (several test processes may call this script at once).
lock_cache "${CACHE_DIR}"
find_go

# --- monitoring CRDs (ServiceMonitor, PodMonitor) -----------------------------------------
CRD_DIR="${CACHE_DIR}/crds"
CRD_STAMP="${CRD_DIR}/VERSION"
if [ ! -f "${CRD_STAMP}" ] || [ "$(cat "${CRD_STAMP}")" != "${PROMETHEUS_OPERATOR_VERSION}" ]; then
  log "go mod download github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}"
  PO_DIR="$("${GO}" mod download -json "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  if [ -z "${PO_DIR}" ] || [ ! -d "${PO_DIR}/example/prometheus-operator-crd" ]; then
    echo "[helm/build] ERROR: could not download prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" >&2
    exit 1
  fi
  rm -rf "${CRD_DIR}"
  mkdir -p "${CRD_DIR}"
  for kind in servicemonitors podmonitors; do
    cp "${PO_DIR}/example/prometheus-operator-crd/monitoring.coreos.com_${kind}.yaml" "${CRD_DIR}/"
  done
  cp "${PO_DIR}/LICENSE" "${CRD_DIR}/LICENSE"
  chmod -R u+w "${CRD_DIR}"
  echo "${PROMETHEUS_OPERATOR_VERSION}" > "${CRD_STAMP}"
  log "monitoring CRDs ${PROMETHEUS_OPERATOR_VERSION} in ${CRD_DIR}"
fi

# --- helm -------------------------------------------------------------------------------
if [ -x "${BIN_DIR}/helm" ] && [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${HELM_VERSION}" ]; then
  log "helm ${HELM_VERSION} already built in ${BIN_DIR} (took $(elapsed))"
  exit 0
fi
log "building helm ${HELM_VERSION} with $("${GO}" version)"

export CGO_ENABLED=0
# `go install pkg@version` builds the module with its own go.mod (no replace directives in
# Helm's), outside any workspace; the binary lands in a temp dir first so a failed build never
# leaves a half-written one behind.
OUT_TMP="${CACHE_DIR}/out"
rm -rf "${OUT_TMP}"
mkdir -p "${OUT_TMP}" "${BIN_DIR}"
MAJOR="${HELM_VERSION%%.*}"
LDFLAGS="-s -w -X helm.sh/helm/${MAJOR}/internal/version.version=${HELM_VERSION}"
LDFLAGS="${LDFLAGS} -X helm.sh/helm/${MAJOR}/internal/version.gitTreeState=clean"
log "go install helm.sh/helm/${MAJOR}/cmd/helm@${HELM_VERSION} (a few minutes on few cores)"
GOBIN="${OUT_TMP}" GOFLAGS=-mod=mod "${GO}" install -trimpath -ldflags="${LDFLAGS}" \
  "helm.sh/helm/${MAJOR}/cmd/helm@${HELM_VERSION}"

rm -f "${STAMP}"
mv -f "${OUT_TMP}/helm" "${BIN_DIR}/helm"
rmdir "${OUT_TMP}"
echo "${HELM_VERSION}" > "${STAMP}"
"${BIN_DIR}/helm" version
log "built helm ${HELM_VERSION} into ${BIN_DIR} (took $(elapsed))"
