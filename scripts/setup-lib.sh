# shellcheck shell=bash
# Sourced by the setup scripts and scripts/dist.sh: apt_install installs Debian packages as root,
# running `apt-get update` at most once per run; cargo_tool installs a pinned cargo subcommand;
# pinned_venv makes a virtualenv with pinned requirements.
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

# A virtualenv VENV with the pinned requirements file REQ, made again (said with WHAT) only when
# it is missing or REQ changed since (a copy of REQ in VENV records what it holds). python3-venv
# comes from Debian when the system Python lacks it.
pinned_venv() {
  local venv=$1 req=$2 what=$3 stamp=$1/.requirements
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    return
  fi
  local python=${PYTHON:-python3}
  if ! command -v "$python" >/dev/null; then
    echo "setup: $python not found; install Python 3.9 or later" >&2
    exit 1
  fi
  # Debian's system Python needs python3-venv for `-m venv`.
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi
  echo "setup: creating $venv with $what" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
}
