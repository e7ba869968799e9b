# shellcheck shell=bash
# Sourced by the setup scripts and scripts/dist.sh: apt_install installs Debian packages as root,
# running `apt-get update` at most once per run; cargo_tool installs a pinned cargo subcommand.
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

# A cargo subcommand at a pinned version: `cargo install` builds it (a few minutes, once per
# machine) only when that version is missing; its output is shown only when it fails.
cargo_tool() {
  local crate=$1 version=$2
  if [ "$("$crate" --version 2>/dev/null)" = "$crate $version" ]; then
    return
  fi
  echo "setup: installing $crate $version with cargo install" >&2
  local out
  out=$(cargo install --quiet --locked --version "$version" "$crate" 2>&1) ||
    { printf '%s\n' "$out" >&2; exit 1; }
}
