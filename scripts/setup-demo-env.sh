#!/usr/bin/env bash
# Sets up what the demo needs besides Rust: a project-local Python virtualenv (.venv) with the
# pinned AWS emulator (moto) from tests/emulator/requirements.txt (python3-venv from Debian when
# the system Python lacks it). The demo's Zabbix is set up by tests/services/zabbix.sh when the
# demo starts it. The test suite needs more: scripts/setup-test-env.sh runs this, then the rest.
# Safe to run again: it does nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-lib.sh
. scripts/setup-lib.sh

venv=.venv
req=tests/emulator/requirements.txt
stamp=$venv/.requirements

if ! { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; }; then
  python=${PYTHON:-python3}
  if ! command -v "$python" >/dev/null; then
    echo "setup: $python not found; install Python 3.9 or later" >&2
    exit 1
  fi
  # Debian's system Python needs python3-venv for `-m venv`.
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi

  echo "setup: creating $venv with the pinned emulator (moto; about a minute)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
