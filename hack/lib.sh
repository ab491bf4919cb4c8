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
