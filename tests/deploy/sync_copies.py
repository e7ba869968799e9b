#!/usr/bin/env python3
"""Rewrites the two copies the deployment files carry, from their single sources:

- the systemd units (deploy/systemd/*) embedded in deploy/user-data/install.sh, and
- install.sh inlined into cloudformation/example.yaml's user-data (with each "${" written "${!",
  which Fn::Sub turns back into "${").

Run it after editing a unit or the installer: `python3 tests/deploy/sync_copies.py`.
tests/deploy.rs fails while a copy differs from its source.
"""

import pathlib
import sys

TOP = pathlib.Path(__file__).resolve().parents[2]
UNITS = [
    "lastcall.service",
    "lastcall-once.service",
    "lastcall-once.timer",
    "lastcall-sweep.service",
    "lastcall-sweep.timer",
]
INSTALL = TOP / "deploy/user-data/install.sh"
EXAMPLE = TOP / "cloudformation/example.yaml"

UNITS_BEGIN = "# --- BEGIN units: copies of deploy/systemd/, written by tests/deploy/sync_copies.py ---\n"
UNITS_END = "# --- END units ---\n"
SCRIPT_BEGIN = "# --- BEGIN a copy of deploy/user-data/install.sh, written by tests/deploy/sync_copies.py ---"
SCRIPT_END = "# --- END of the copy ---"


def replace_between(text, begin, end, new, path):
    """Replaces what stands between the lines `begin` and `end` (both kept) with `new`."""
    try:
        start = text.index(begin) + len(begin)
        stop = text.index(end, start)
    except ValueError:
        sys.exit(f"sync_copies: {path}: markers {begin.strip()!r} / {end.strip()!r} not found")
    return text[:start] + new + text[stop:]


def main():
    install = INSTALL.read_text()
    units = ""
    for name in UNITS:
        body = (TOP / "deploy/systemd" / name).read_text()
        if "UNIT_END" in body or not body.endswith("\n"):
            sys.exit(f"sync_copies: deploy/systemd/{name} must end in a newline and not contain UNIT_END")
        units += f"cat >\"$tmp/units/{name}\" <<'UNIT_END'\n{body}UNIT_END\n"
    install = replace_between(install, UNITS_BEGIN, UNITS_END, units, INSTALL)
    INSTALL.write_text(install)

    example = EXAMPLE.read_text()
    begin = example.index(SCRIPT_BEGIN)
    indent = example[example.rindex("\n", 0, begin) + 1 : begin]
    escaped = install.replace("${", "${!")
    block = "".join(indent + line if line.strip() else "\n" for line in escaped.splitlines(True))
    example = replace_between(example, SCRIPT_BEGIN + "\n", indent + SCRIPT_END, block, EXAMPLE)
    EXAMPLE.write_text(example)


if __name__ == "__main__":
    main()
