"""The `fastclr` program (`python -m fastclr` and the console script): Ctrl-C at any moment
ends it with one line and exit status 130.

Python turns Ctrl-C into a KeyboardInterrupt wherever the interpreter happens to be: in the
middle of an import (which can leave a half-made module that fails later with another error),
a thread join or an exit handler, each with its own traceback. So the program replaces that
with a handler that writes one line and exits at once, installed before anything of fastclr
is imported. Pretraining installs its own handler for its loop (finish the step, save, stop:
fastclr.train.signals) and puts this one back when the loop ends. Nothing is lost by exiting
at once elsewhere: every file fastclr writes is written to a temporary name and renamed, so an
exit leaves the old file or the new one, and the run folder's lock dies with the process.
"""

import os
# the C module Python itself loads at start-up (os too): nothing to import before the handler
# is in place (signal.py imports enum; a Ctrl-C landing in that millisecond gave a traceback)
import _signal

_PID = os.getpid()


def _interrupted(signum, frame) -> None:
    if os.getpid() != _PID:  # a forked worker: its parent got the same Ctrl-C and speaks
        return
    try:
        import sys
        sys.stdout.flush()  # what was printed before the Ctrl-C still reaches a pipe or file
    except Exception:  # noqa: BLE001  interrupted in the middle of a write: nothing to keep
        pass
    os.write(2, b"\nfastclr: interrupted\n")
    os._exit(130)


def run() -> None:
    """The program: `fastclr.cli.main` on sys.argv, its result as the exit status."""
    global _PID
    _PID = os.getpid()
    _signal.signal(_signal.SIGINT, _interrupted)
    from fastclr.cli import main
    raise SystemExit(main())


if __name__ == "__main__":
    run()
