#!/usr/bin/env bash
# Build (or reuse) everything the single-node test cluster (tests/cluster.py) needs on top of
# the test control plane (hack/envtest/build.sh: etcd, kube-apiserver, kube-controller-manager):
#   - kube-scheduler, kubelet, kube-proxy: the same k8s.io/kubernetes module and version, built in
#     a module seeded with envtest's go.mod/go.sum so the Go build cache is shared
#   - CoreDNS, from its Go module (go install through the module proxy)
#   - the KubeRay operator, from its Go module through a wrapper module (`go install …@version`
#     is refused for it)
#   - pause: a static Go program packed as an OCI archive (no registry: it is containerd's
#     sandbox_image, imported with `ctr images import`)
#   - Debian's containerd, runc, CNI plugins, iptables, conntrack (apt-get, idempotent)
# Everything lands in <repo>/.cache/cluster/bin; a step whose stamp matches is skipped.
#
# Environment: KUBETUNE_K8S_VERSION (as envtest), KUBETUNE_COREDNS_VERSION, KUBETUNE_KUBERAY_VERSION,
#   KUBETUNE_CLUSTER_DIR (cache dir), GO, GOFLAGS (default -p=2: the machine is shared).
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
hack_begin cluster/build

K8S_VERSION="${KUBETUNE_K8S_VERSION:-v1.35.8}"
COREDNS_VERSION="${KUBETUNE_COREDNS_VERSION:-v1.12.4}"
KUBERAY_VERSION="${KUBETUNE_KUBERAY_VERSION:-v1.5.1}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${KUBETUNE_CLUSTER_DIR:-${REPO_ROOT}/.cache/cluster}"
BIN_DIR="${CACHE_DIR}/bin"
ENVTEST_BUILD_DIR="${KUBETUNE_ENVTEST_DIR:-${REPO_ROOT}/.cache/envtest}/build-${K8S_VERSION}"

stamp_ok() { [ -f "${BIN_DIR}/.$1.version" ] && [ "$(cat "${BIN_DIR}/.$1.version")" = "$2" ]; }
stamp() { echo "$2" > "${BIN_DIR}/.$1.version"; }

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

mkdir -p "${BIN_DIR}"
lock_cache "${CACHE_DIR}"

# --- Debian packages -----------------------------------------------------------------------
PKGS=(containerd runc containernetworking-plugins iptables conntrack)
MISSING=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING+=("$p")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
  log "apt-get install -y ${MISSING[*]}"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${MISSING[@]}"
fi
log "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | head -1 | awk '{print $3}')"

# --- etcd, kube-apiserver, kube-controller-manager (and envtest's go.mod) -----------------
bash "${REPO_ROOT}/hack/envtest/build.sh"

find_go
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--p=2} -mod=mod"
NICE=(nice -n 19)

# --- kube-scheduler, kubelet, kube-proxy ----------------------------------------------------
if stamp_ok kube "${K8S_VERSION}" && [ -x "${BIN_DIR}/kubelet" ]; then
  log "kube-scheduler/kubelet/kube-proxy ${K8S_VERSION} already built"
else
  t=$(date +%s)
  BUILD_DIR="${CACHE_DIR}/build-k8s-${K8S_VERSION}"
  mkdir -p "${BUILD_DIR}"
  # Same module graph as the control plane (same replaces, same versions) = same build cache.
  if [ ! -f "${BUILD_DIR}/go.mod" ]; then
    sed 's#^module .*#module kubetune.local/cluster-build#' "${ENVTEST_BUILD_DIR}/go.mod" > "${BUILD_DIR}/go.mod"
    cp "${ENVTEST_BUILD_DIR}/go.sum" "${BUILD_DIR}/go.sum"
  fi
  cd "${BUILD_DIR}"
  MINOR="$(echo "${K8S_VERSION#v1.}" | cut -d. -f1)"
  LDFLAGS="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS="${LDFLAGS} -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1"
    LDFLAGS="${LDFLAGS} -X ${pkg}.gitMinor=${MINOR} -X ${pkg}.gitTreeState=clean"
  done
  CMDS=(k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  log "go get ${CMDS[*]}"
  "${GO}" get "${CMDS[@]/%/@${K8S_VERSION}}"
  grep -q "k8s.io/kubernetes ${K8S_VERSION}" go.mod || { echo "k8s.io/kubernetes is no longer ${K8S_VERSION}" >&2; exit 1; }
  log "go build kube-scheduler kubelet kube-proxy (long on few cores)"
  mkdir -p out
  "${NICE[@]}" "${GO}" build -trimpath -ldflags="${LDFLAGS}" -o out/ "${CMDS[@]}"
  mv -f out/kube-scheduler out/kubelet out/kube-proxy "${BIN_DIR}/"
  stamp kube "${K8S_VERSION}"
  log "kube ${K8S_VERSION} built in $(( $(date +%s) - t ))s"
fi

# --- CoreDNS -------------------------------------------------------------------------------
if stamp_ok coredns "${COREDNS_VERSION}" && [ -x "${BIN_DIR}/coredns" ]; then
  log "coredns ${COREDNS_VERSION} already built"
else
  t=$(date +%s)
  log "go install github.com/coredns/coredns@${COREDNS_VERSION}"
  (cd "${CACHE_DIR}" && GOBIN="${BIN_DIR}" "${NICE[@]}" "${GO}" install -trimpath -ldflags="-s -w" \
     "github.com/coredns/coredns@${COREDNS_VERSION}")
  stamp coredns "${COREDNS_VERSION}"
  log "coredns built in $(( $(date +%s) - t ))s"
fi

# --- KubeRay operator --------------------------------------------------------------------
if stamp_ok kuberay "${KUBERAY_VERSION}" && [ -x "${BIN_DIR}/kuberay-operator" ]; then
  log "kuberay-operator ${KUBERAY_VERSION} already built"
else
  t=$(date +%s)
  W="${CACHE_DIR}/build-kuberay-${KUBERAY_VERSION}"
  mkdir -p "${W}"
  cd "${W}"
  [ -f go.mod ] || printf 'module kubetune.local/kuberay-build\n\ngo 1.24.0\n' > go.mod
  log "go get github.com/ray-project/kuberay/ray-operator@${KUBERAY_VERSION}"
  "${GO}" get "github.com/ray-project/kuberay/ray-operator@${KUBERAY_VERSION}"
  "${NICE[@]}" "${GO}" build -trimpath -ldflags="-s -w" -o "${BIN_DIR}/kuberay-operator" \
    github.com/ray-project/kuberay/ray-operator
  stamp kuberay "${KUBERAY_VERSION}"
  log "kuberay-operator built in $(( $(date +%s) - t ))s"
fi

# --- pause (sandbox image) ---------------------------------------------------------------
PAUSE_SRC_SUM="$(sha256sum "${SCRIPT_DIR}/pause/main.go" "${SCRIPT_DIR}/oci_archive.py" | sha256sum | cut -c1-16)"
if stamp_ok pause "${PAUSE_SRC_SUM}" && [ -f "${CACHE_DIR}/pause.oci.tar" ]; then
  log "pause image already built"
else
  P="${CACHE_DIR}/build-pause"
  rm -rf "${P}" && mkdir -p "${P}"
  cp "${SCRIPT_DIR}/pause/main.go" "${P}/"
  (cd "${P}" && printf 'module kubetune.local/pause\n\ngo 1.22\n' > go.mod \
     && "${NICE[@]}" "${GO}" build -trimpath -ldflags="-s -w" -o "${BIN_DIR}/pause" .)
  python3 "${SCRIPT_DIR}/oci_archive.py" --binary "${BIN_DIR}/pause" \
    --name "kubetune.local/pause:1" --out "${CACHE_DIR}/pause.oci.tar"
  stamp pause "${PAUSE_SRC_SUM}"
fi

ls -la "${BIN_DIR}"
log "done (took $(elapsed))"
