#!/usr/bin/env bash
# Install (or reuse) Debian's `prometheus` package: the server and `promtool`, which
# tests/test_prometheus.py starts with a scrape config for the local endpoints.
#
# Idempotent: nothing happens when both are already on PATH. The package's own service is
# neither needed nor started (the test runs its own server on a random port and data dir).
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

log() { echo "[prometheus/install] $(date +%H:%M:%S) $*"; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  log "prometheus found: $(command -v prometheus) ($(prometheus --version 2>&1 | head -1))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# No init system here: keep the package's post-install from trying to start the service.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "${POLICY}" ] && [ "$(id -u)" = "0" ]; then
  printf '#!/bin/sh\nexit 101\n' > "${POLICY}" && chmod +x "${POLICY}" && ADDED_POLICY=1
fi
trap '[ "${ADDED_POLICY}" = "1" ] && rm -f "${POLICY}"' EXIT

log "apt-get update"
apt_get update -qq
log "apt-get install -y prometheus"
apt_get install -y -qq --no-install-recommends prometheus
log "installed: $(command -v prometheus) ($(prometheus --version 2>&1 | head -1))"
