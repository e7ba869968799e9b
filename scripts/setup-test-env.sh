#!/usr/bin/env bash
# Sets up what the tests and the demo need besides Rust:
# - a project-local Python virtualenv (.venv) with the pinned AWS emulator (moto) from
#   tests/emulator/requirements.txt, and the pinned cfn-lint from tests/requirements-deploy.txt;
# - the Debian packages the deployment tests (tests/deploy.rs, tests/dist.rs) run: systemd (for
#   systemd-analyze and `systemctl --root`; nothing is booted), shellcheck, for the release
#   packages rpm and rpm2cpio (rpm, rpm2archive), and qemu-user-static, which runs the aarch64
#   build here; installed only when missing.
# What builds the release artefacts (the cross toolchain, cargo-deb, cargo-generate-rpm) is set up
# by scripts/dist.sh itself.
# Safe to run again: it does nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
deploy_req=tests/requirements-deploy.txt
deploy_stamp=$venv/.requirements-deploy

# shellcheck source=scripts/setup-lib.sh
. scripts/setup-lib.sh

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
# The aarch64 build, run here by qemu's user-mode emulator (tests/dist.rs).
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi


# The emulator's virtualenv (what the demo needs too).
scripts/setup-demo-env.sh

if ! { [ -f "$deploy_stamp" ] && cmp -s "$deploy_req" "$deploy_stamp"; }; then
  echo "setup: installing the pinned cfn-lint into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$deploy_req"
  cp "$deploy_req" "$deploy_stamp"
fi
