# shellcheck shell=sh
# lastcall's %preun ($1: 0 on an erase, 1 on an upgrade): on an erase, stops the units, so that
# no daemon outlives its binary. A stop lets a running step finish (KillMode=mixed,
# TimeoutStopSec=15min in the units). An upgrade stops nothing.
if [ "$1" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl stop lastcall-sweep.timer lastcall-sweep.service lastcall-once.timer lastcall-once.service lastcall.service || :
fi
