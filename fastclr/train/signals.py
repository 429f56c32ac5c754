"""Stopping on a signal: SIGTERM, SIGINT and SIGUSR1 finish the step, save, and stop.

Torch-free, so that the command line can name `Stopped` before importing torch.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path


class Stopped(Exception):
    """Training stopped early on a signal, after saving a checkpoint to resume from."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} "
                         "saved: run the same command again to resume")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's pre-emption warning) ask the loop to finish its
    step, save and stop; a second Ctrl-C stops at once, as Ctrl-C did before (the command line's
    one-line exit, or KeyboardInterrupt). Handlers are restored on exit.

    Forked processes (DataLoader workers) inherit the handler, and Ctrl-C reaches every process
    of the terminal's group: only the process that entered speaks and stops; in a worker the
    signal is ignored (its parent stops it)."""

    NAMES = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return
        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":  # the second Ctrl-C: at once
            before = self._previous.get(signum)
            if callable(before):  # what Ctrl-C did before the loop (the CLI's one-line exit)
                before(signum, frame)
            raise KeyboardInterrupt
        if self.received is None:
            self.received = name
            # os.write, not print: the signal may land inside a print to the same stream
            os.write(2, f"\nfastclr: {name} received: finishing this step, then saving a "
                        "checkpoint (Ctrl-C again to quit at once)\n".encode())

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
