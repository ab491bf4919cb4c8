#!/usr/bin/env bash
# Build (or reuse) Prometheus with Kubernetes service discovery, compiled from its Go module
# (github.com/prometheus/prometheus, fetched through the Go module proxy) at a pinned version, cached
# in <repo>/.cache/prometheus/bin. Debian's `prometheus` package (hack/prometheus/install.sh, used for
# the local scrape tests) is built without `kubernetes_sd_configs`; the cluster tests need them
# (tests/test_cluster_prometheus.py). Only the file, HTTP and Kubernetes discovery plugins are
# compiled in (Prometheus's own build tags), which keeps the cloud SDKs out of the build.
#
# Idempotent: nothing is rebuilt when the cached binary was built for the requested version.
#
# Environment:
#   KUBETUNE_PROMETHEUS_MODULE_VERSION   module version (v0.316.0 is Prometheus 3.x; default below)
#   KUBETUNE_PROMETHEUS_DIR              cache dir (default <repo>/.cache/prometheus)
#   GO                                   go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
hack_begin prometheus/build

VERSION="${KUBETUNE_PROMETHEUS_MODULE_VERSION:-v0.316.0}"
TAGS="remove_all_sd,enable_kubernetes_sd"

CACHE_DIR="${KUBETUNE_PROMETHEUS_DIR:-${REPO_ROOT}/.cache/prometheus}"
BIN_DIR="${CACHE_DIR}/bin"
STAMP="${BIN_DIR}/VERSION"

# One build at a time (./dev test starts this in the background; the test waits on the same lock).
lock_cache "${CACHE_DIR}"

if [ -x "${BIN_DIR}/prometheus" ] && [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${VERSION} ${TAGS}" ]; then
  log "prometheus ${VERSION} already built in ${BIN_DIR} (took $(elapsed))"
  exit 0
fi
find_go
export CGO_ENABLED=0
log "building prometheus ${VERSION} (tags ${TAGS}) with $("${GO}" version)"

# `go install pkg@version` builds with Prometheus's own go.mod (it has no replace directives); the
# binary lands in a temp dir first so a failed build never leaves a half-written one behind. Without
# the `builtinassets` tag the web UI is not embedded; the HTTP API the tests use is all there.
OUT_TMP="${CACHE_DIR}/out"
rm -rf "${OUT_TMP}"
mkdir -p "${OUT_TMP}" "${BIN_DIR}"
log "go install github.com/prometheus/prometheus/cmd/prometheus@${VERSION} (minutes on few cores)"
GOBIN="${OUT_TMP}" GOFLAGS="${GOFLAGS:--p=2} -mod=mod" "${GO}" install -trimpath -tags "${TAGS}" -ldflags="-s -w" \
  "github.com/prometheus/prometheus/cmd/prometheus@${VERSION}"

rm -f "${STAMP}"
mv -f "${OUT_TMP}/prometheus" "${BIN_DIR}/prometheus"
rmdir "${OUT_TMP}"
echo "${VERSION} ${TAGS}" > "${STAMP}"
log "built prometheus ${VERSION} into ${BIN_DIR} (took $(elapsed))"
