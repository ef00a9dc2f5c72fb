"""Graceful stop: SIGTERM, SIGINT and SIGUSR1 ask the job to checkpoint and exit 75.

A handler only records the request; the trainer notices it between lockstep
steps (nes_mpi.comm.StopChannel tells the other ranks), so a stop never waits
for the end of a long generation, and a signal delivered to a single rank stops
the whole job. The handlers are installed first thing in `python -m nes_mpi`
and stay until the process ends (see `settle`), so no signal in start-up or
teardown kills a rank.

Ctrl-C at a terminal can reach a rank twice within milliseconds (the terminal's
process group and the launcher's forwarding): a SIGINT within SIGINT_REPEAT_WINDOW
seconds of the first is the same request. A later, deliberate second Ctrl-C
raises KeyboardInterrupt, which the trainer turns into an abort with EXIT_INTERRUPTED.
"""
from __future__ import annotations

import signal
import time

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint written, run not finished; submit again to continue
EXIT_INTERRUPTED = 130  # a second, deliberate Ctrl-C: stopped at once, no checkpoint of the generation in progress
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SIGINT_REPEAT_WINDOW = 2.0


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self.first_sigint: float | None = None

    def install(self) -> "StopRequest":
        """Install the handlers for the rest of the process (a late signal during teardown must not kill)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self.first_sigint is None:
                self.first_sigint = now
            elif now - self.first_sigint > SIGINT_REPEAT_WINDOW:
                raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def settle(self) -> None:
        """The outcome is decided: ignore the stop signals from here to the end of the process.

        Python puts back the default (fatal) action of signals that have a Python handler when the
        interpreter finalizes, before MPI_Finalize runs; SIG_IGN survives that, so a signal landing
        in the last milliseconds of a finished run cannot turn its exit code into a death by signal.
        """
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


_installed: StopRequest | None = None


def install_early() -> StopRequest:
    """The process-wide request, with handlers installed at most once (called before any heavy import)."""
    global _installed
    if _installed is None:
        _installed = StopRequest().install()
    return _installed
