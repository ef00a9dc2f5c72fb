"""Graceful stop: SIGTERM, SIGINT and SIGUSR1 ask the job to checkpoint after the current generation.

A handler only sets a flag; the trainer ORs the flags of all ranks once per
generation, so a signal delivered to any single rank stops the whole job
cleanly. A second SIGINT interrupts at once.
"""
from __future__ import annotations

import signal

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint written, run not finished; submit again to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None

    def install(self) -> "StopRequest":
        """Install the handlers for the rest of the process (a late signal during teardown must not kill)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
