#!/usr/bin/env bash
# Refresh the vendored KubeRay CRDs (hack/kuberay/crds/) and KubeRay's licence from the KubeRay Go
# module at a pinned version, through the Go module proxy (checksummed by sum.golang.org).
#   bash hack/kuberay/refresh.sh            # the version pinned below
#   KUBERAY_VERSION=v1.5.2 bash hack/kuberay/refresh.sh
# Then update KUBERAY_VERSION below and in NOTICE.md, run the kube tests, commit.
set -euo pipefail

KUBERAY_VERSION="${KUBERAY_VERSION:-v1.5.1}"
MODULE="github.com/ray-project/kuberay/ray-operator"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

WORK="$(mktemp -d)"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
export GOMODCACHE="$WORK/mod" GOFLAGS=-mod=mod GO111MODULE=on
DIR="$(cd "$WORK" && "$GO" mod download -json "${MODULE}@${KUBERAY_VERSION}" \
       | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"

mkdir -p "$HERE/crds"
rm -f "$HERE"/crds/*.yaml
cp "$DIR"/config/crd/bases/*.yaml "$HERE/crds/"
cp "$DIR/LICENSE" "$HERE/LICENSE"
chmod 644 "$HERE"/crds/*.yaml "$HERE/LICENSE"
echo "KubeRay ${KUBERAY_VERSION}: $(ls "$HERE/crds" | tr '\n' ' ')"
