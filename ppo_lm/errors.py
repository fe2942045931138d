"""Errors a user can fix, and how the script ends on one: a single `error: ...` line and an exit code.

Exit codes: 2 for bad input or a bad situation found at start-up, 1 for a failure during training, 128 + N for a stop
by signal N (130 for Ctrl-C)."""

import os
import signal
import sys
from contextlib import contextmanager


class RunError(Exception):
    """An error the user can fix; `exits_cleanly` prints its one-line message and exits with `code`."""

    def __init__(self, message: str, code: int = 2, every_process: bool = False):
        super().__init__(message)
        self.code = code
        self.every_process = every_process  # said by every process, not only the main one


INTERRUPTED = RunError("interrupted (Ctrl-C) during start-up, before the first PPO step; output_dir is as it was: "
                       "start the run again when ready", code=130)


def quiet_interrupts() -> None:
    """Ctrl-C during start-up (while the script imports torch, transformers and TRL, or loads models; the stop
    handler takes over before the first step): one line, exit 130."""
    default = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            end(INTERRUPTED, hard=True)
        default(kind, value, traceback)

    sys.excepthook = hook
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (`nohup`, `&`)
        signal.signal(signal.SIGINT, note_interrupt)


INTERRUPTS = []  # the Ctrl-Cs note_interrupt has seen


def note_interrupt(signum, frame):
    """Python's own Ctrl-C handler (raise KeyboardInterrupt), which also notes the Ctrl-C: Python drops an exception
    raised in a destructor ("Exception ignored in ... __del__"), and a Ctrl-C can land in one (a `regex` object's,
    collected during the imports), so the run would go on. `raise_dropped_interrupt` raises it again."""
    INTERRUPTS.append(signum)
    signal.default_int_handler(signum, frame)


def raise_dropped_interrupt() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came and the run is still going (its exception was dropped)."""
    if INTERRUPTS:
        raise KeyboardInterrupt


@contextmanager
def exits_cleanly():
    """Run the script's main(): a RunError ends in one line and its exit code instead of a traceback."""
    try:
        yield
    except RunError as e:
        end(e)


def end(error: RunError, hard: bool = False):
    """Print the error's line (once, from the main process) and exit with its code."""
    # every process has the same error (stopping.together): said once, by the main process, unless it may be gone
    if int(os.environ.get("RANK", "0")) == 0 or error.every_process:
        print(f"error: {error}", file=sys.stderr)
    torch = sys.modules.get("torch")  # not imported yet when Ctrl-C comes during the imports
    if hard or (torch and torch.distributed.is_available() and torch.distributed.is_initialized()):
        # gloo's C++ threads, still alive at interpreter teardown, abort a process ("terminate called without an
        # active exception", exit -6) in about 1 run of 15; skip the teardown. Files are closed by now:
        # checkpoints and metrics.jsonl are written with `with`, the tensorboard writer is flushed every step.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(error.code)
    sys.exit(error.code)
