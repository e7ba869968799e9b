#!/usr/bin/env python3
"""tests/emulator/emulator.py as the benchmarks run it: unchanged, except for two transport-level
fidelity fixes that belong to neither lastcall nor the baseline.

1. TCP_NODELAY on its fake IMDS servers (and its control server). Python's http.server writes a
   response's headers and its body in two sends. On a keep-alive connection (the IMDS client in
   lastcall's AWS SDK keeps its connection), Nagle's algorithm holds the body back until the
   client's delayed ACK for the headers, about 40 ms later, so every IMDS read after the first on
   a connection took ~43 ms on the emulator. The real IMDS answers in well under a millisecond;
   the baseline's curl opens a fresh connection per request, where the kernel acknowledges at
   once, so only lastcall paid for this.

2. A message whose visibility timeout runs out wakes the long polls waiting on its queue, as a
   ChangeMessageVisibility to 0 already does in the emulator ("Real SQS returns such a message to
   a waiting long poll promptly"). Without it moto's waiting long polls notice such a message only
   on their own 1 s poll step, and the step of the instance that set the timeout (it polls again
   right after the call, so its steps fall on whole seconds after it) comes first: the message
   goes back to the very instance that held it back, every time.
"""

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "emulator"))

import emulator  # noqa: E402
from moto.sqs.models import SQSBackend  # noqa: E402

emulator.ImdsHandler.disable_nagle_algorithm = True
emulator.ControlHandler.disable_nagle_algorithm = True

_change_visibility = SQSBackend.change_message_visibility


def _wake_later(cond: threading.Condition, seconds: float) -> None:
    def wake() -> None:
        with cond:
            cond.notify_all()

    t = threading.Timer(seconds, wake)
    t.daemon = True
    t.start()


def change_message_visibility(self, queue_name, receipt_handle, visibility_timeout):  # type: ignore[no-untyped-def]
    _change_visibility(self, queue_name, receipt_handle, visibility_timeout)
    # moto's visibility has millisecond resolution and is strict ("now > visible_at").
    if 0 < int(visibility_timeout) <= 600:
        _wake_later(self.get_queue(queue_name)._messages_lock, int(visibility_timeout) + 0.002)


def install() -> None:
    # After emulator.install_patches(), which wraps change_message_visibility itself.
    global _change_visibility
    _change_visibility = SQSBackend.change_message_visibility
    SQSBackend.change_message_visibility = change_message_visibility


_install_patches = emulator.install_patches


def install_patches() -> None:
    _install_patches()
    install()


emulator.install_patches = install_patches

if __name__ == "__main__":
    emulator.main()
