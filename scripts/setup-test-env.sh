#!/usr/bin/env bash
# Sets up what the tests and the demo need besides Rust:
# - a project-local Python virtualenv (.venv) with the pinned AWS emulator (moto) from
#   tests/emulator/requirements.txt, and the pinned cfn-lint from tests/requirements-deploy.txt;
# - the Debian packages the deployment tests (tests/deploy.rs) run: systemd (for systemd-analyze
#   and `systemctl --root`; nothing is booted), shellcheck, and for the release packages rpm
#   and rpm2cpio (rpm, rpm2archive), installed only when missing;
# - the pinned cargo-deb and cargo-generate-rpm, which build the .deb and the .rpm, installed with
#   `cargo install --locked` only when that version is missing.
# Safe to run again: it does nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
deploy_req=tests/requirements-deploy.txt
deploy_stamp=$venv/.requirements-deploy

# shellcheck source=scripts/apt.sh
. scripts/apt.sh

# Tools the deployment tests run.
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v rpm >/dev/null || missing+=(rpm)
# rpm2archive: the .rpm's payload as a tar.
command -v rpm2archive >/dev/null || missing+=(rpm2cpio)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
# cargo-deb computes Depends with dpkg-shlibdeps.
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v readelf >/dev/null || missing+=(binutils)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# The packaging tools, at the versions the packages are tested with. `cargo install` builds them
# (a few minutes each, once per machine); their output is shown only when it fails.
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
cargo_tool cargo-deb 3.8.0
cargo_tool cargo-generate-rpm 0.21.1

# The emulator's virtualenv (what the demo needs too).
scripts/setup-demo-env.sh

if ! { [ -f "$deploy_stamp" ] && cmp -s "$deploy_req" "$deploy_stamp"; }; then
  echo "setup: installing the pinned cfn-lint into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$deploy_req"
  cp "$deploy_req" "$deploy_stamp"
fi
