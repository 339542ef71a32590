"""Ctrl-C that is never lost.

Python turns SIGINT into ``KeyboardInterrupt`` at whatever bytecode is running.
When that is a garbage-collection callback (JAX registers one) or a ``__del__``
method, the exception is printed as "ignored" and swallowed, and the program
carries on as if nothing had happened. :func:`reliable_interrupts` delivers a
SIGINT again if the first one has not reached the caller within a moment.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def reliable_interrupts(retry_s: float = 1.0) -> Iterator[None]:
    """While active, SIGINT raises ``KeyboardInterrupt`` and, if that one is
    swallowed, again every ``retry_s`` seconds until it propagates out of the
    ``with`` block (the swallowed one is not reported on stderr). A no-op
    outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = threading.Event()

    def again() -> None:
        if pending.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    def handler(signum, frame):
        pending.set()
        timer = threading.Timer(retry_s, again)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    old_hook = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            old_hook(unraisable)

    old = signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        pending.clear()
        signal.signal(signal.SIGINT, old)
        sys.unraisablehook = old_hook
