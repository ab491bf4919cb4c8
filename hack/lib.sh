# Sourced by the hack/*/ scripts.

# apt-get as root, one at a time across these scripts (./dev test runs some of them in the background)
# and waiting for any other apt/dpkg. TERM and INT are ignored inside, so stopping a background build
# never leaves dpkg half done; the script stops right after.
apt_get() {
  local sudo=""
  [ "$(id -u)" = "0" ] || sudo="sudo"
  (
    trap '' TERM INT
    ${sudo} env DEBIAN_FRONTEND=noninteractive flock /var/lock/kubetune-apt.lock \
      apt-get -o DPkg::Lock::Timeout=900 "$@"
  )
}

# Every build script: `hack_begin NAME` once, after sourcing this file. It sets REPO_ROOT and START_TS and
# gives `log` (lines prefixed "[NAME] HH:MM:SS") and `elapsed [SINCE]` ("123s").
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
hack_begin() {
  HACK_NAME="$1"
  START_TS=$(date +%s)
}
log() { echo "[${HACK_NAME}] $(date +%H:%M:%S) $*"; }
elapsed() { echo "$(( $(date +%s) - ${1:-${START_TS}} ))s"; }

# lock_cache DIR: create DIR and hold its lock (fd 9) until the script exits: one build at a time, and
# whoever waits on it (a test, ./dev test's background build) finds the cache complete.
lock_cache() {
  mkdir -p "$1"
  exec 9>"$1/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
}

# find_go: GO (from the environment, PATH or /usr/local/go) or a clear error; the local toolchain only.
find_go() {
  if [ -z "${GO:-}" ]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
  fi
  if [ ! -x "${GO}" ]; then
    echo "[${HACK_NAME}] ERROR: no Go toolchain found (set GO=/path/to/go)" >&2
    exit 1
  fi
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
}
