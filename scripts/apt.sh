# shellcheck shell=bash
# Sourced by the setup scripts: installs Debian packages as root, running `apt-get update` at
# most once per run.
apt_updated=
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: cannot install $* (needs root and apt-get); install them and run this again" >&2
    exit 1
  fi
  echo "setup: installing $*" >&2
  local out
  # apt's chatter (debconf notes and the like) is shown only when something fails.
  if [ -z "$apt_updated" ]; then
    out=$(apt-get update -qq 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
    apt_updated=1
  fi
  out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" 2>&1) ||
    { printf '%s\n' "$out" >&2; exit 1; }
}

