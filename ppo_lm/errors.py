"""Errors a user can fix, and how the script ends on one: a single `error: ...` line and an exit code. Also how
the errors of libraries read: a failed write (a full disk), another process lost (gloo), an exception's first line.

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


def first_line(e: Exception) -> str:
    """The first line of an exception's message (its type's name when the message is empty): what a one-line error
    quotes of a library's error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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
    # every process has the same error (processes.fail_together): said once, by the main process, unless it may be gone
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


# What gloo says at a collective operation when a process it waits for has ended (killed, out of memory, crashed)
LOST_PROCESS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_process(e: Exception) -> str | None:
    """gloo's words for another process having ended, if `e` is that error."""
    return next((phrase for phrase in LOST_PROCESS if phrase in str(e)), None) if isinstance(e, RuntimeError) else None


def write_error(e: Exception) -> bool:
    """Whether `e` is a failed write (a full disk, a read-only directory): OSError from Python's own files,
    RuntimeError from torch's serializer ("unexpected pos ...", "iostream error"; not running out of memory or
    losing another process, which have lines of their own), or the OS error that the Rust writers of safetensors
    (SafetensorError) and tokenizers (a plain Exception) pass on as "... (os error 28)"."""
    if isinstance(e, RuntimeError):
        import torch  # imported by then; not at the top, so that quiet_interrupts() can come before torch

        return not isinstance(e, torch.OutOfMemoryError) and not lost_process(e)
    return isinstance(e, OSError) or (not isinstance(e, RunError) and "(os error " in str(e))


@contextmanager
def writing(what: str, path, output_dir, code: int = 1, then: str | None = None):
    """A failed write in the block ends the run with `write_failed`'s line. Other errors pass on."""
    try:
        yield
    except Exception as e:
        if not write_error(e):
            raise
        raise write_failed(what, path, e, output_dir, code, then) from None


def write_failed(what: str, path, e: Exception, output_dir, code: int = 1, then: str | None = None) -> RunError:
    """One line: what could not be written, why, and how to go on (`then`; by default: resume from the last
    checkpoint, or start again where none was saved yet)."""
    from ppo_lm.checkpoints import list_checkpoints  # checkpoints' own writes use writing()

    reason = first_line(e)
    then = then or ("resume with --resume_from_checkpoint latest" if list_checkpoints(output_dir) else
                    "start the run again with --overwrite_output_dir (no checkpoint was saved yet)")
    return RunError(f"could not write {what} to {path} ({type(e).__name__}: {reason}): free disk space (or fix the "
                    f"permissions) there, then {then}", code=code)
