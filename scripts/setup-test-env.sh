#!/usr/bin/env bash
# Sets up what the tests and the demo need besides Rust: a project-local Python virtualenv with
# the pinned AWS emulator (moto) from tests/emulator/requirements.txt. Safe to run again: it does
# nothing when the virtualenv already matches the requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
req=tests/emulator/requirements.txt
stamp=$venv/.requirements

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
  exit 0
fi

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null; then
  echo "setup: $python not found; install Python 3.9 or later" >&2
  exit 1
fi
# Debian's system Python needs python3-venv for `-m venv`.
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "setup: '$python -m venv' does not work; install python3-venv" >&2
    exit 1
  fi
fi

echo "setup: creating $venv with the pinned emulator (moto)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
