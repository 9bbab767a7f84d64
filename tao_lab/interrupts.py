"""Ctrl-C / SIGTERM for the training loop: a step is abandoned or finished, never half-applied.

    guard = SignalGuard()
    with guard.handling():                 # SIGINT/SIGTERM raise KeyboardInterrupt (main thread only)
        ...                                # rollout, forward/backward: an interrupt abandons the step
        guard.begin()                      # from the first optimizer step on, a signal waits ...
        with guard.critical_section():     # ... until the bookkeeping is done, then raises
            ...
        guard.clear()                      # after an exception: no longer deferring

Callers: the trainer's step (its checkpoint on KeyboardInterrupt lives in Trainer.train) and
SFTRun.step (sft.py; likewise SFTRun.train).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class SignalGuard:
    """Raises KeyboardInterrupt on SIGINT/SIGTERM, deferred while a critical section runs."""

    def __init__(self):
        self.critical, self.pending = False, None

    def begin(self) -> None:
        """Defer signals from now until the critical section that follows ends."""
        self.critical = True

    def clear(self) -> None:
        self.critical = False

    @contextmanager
    def critical_section(self):
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
            if self.pending is not None:
                self.pending = None
                raise KeyboardInterrupt

    @contextmanager
    def handling(self):
        """Install the handlers for the block (a no-op outside the main thread: a notebook's worker)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.critical:
                self.pending = signum
            else:
                raise KeyboardInterrupt

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
