"""The run's processes, which must stop together: in a multi-process run (accelerate launch) each process works on
its own slice of the batch, so a reward function can fail, or a SIGTERM can arrive, on one process only, and the others
would wait forever in the next collective operation. Phases that can fail that way run inside `fail_together`,
which every process enters: the first error, and any stop signal received so far, reach all of them, so all stop at
the same step. Also: a decision the main process alone makes, a process lost or out of memory as one line, and the
end of a run."""

import os
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from accelerate.utils import broadcast_object_list, gather_object

from ppo_lm.errors import RunError, first_line, lost_process
from ppo_lm.signals import resume_command


@contextmanager
def fail_together(state, received_signals: list = ()):
    """Run a phase on every process; a RunError in it on any process is raised on all of them (the first one's
    message). Yields an object whose `stop_signal`, set when the phase ends, is the same on every process: a stop
    signal that any process had received by then (in `received_signals`), or 0."""
    outcome = SimpleNamespace(stop_signal=0)
    failure = None
    try:
        yield outcome
    except RunError as e:
        failure = e
    signum = received_signals[0] if received_signals else 0
    if state.num_processes > 1:  # one gather per phase: (message, code, signal) from every process
        outcomes = gather_object([(str(failure) if failure else None, failure.code if failure else 0, signum)])
        failed = [(message, code) for message, code, _ in outcomes if message is not None]
        failure = RunError(*failed[0]) if failed else None
        signum = max(s for *_, s in outcomes)
    if failure:
        raise failure
    outcome.stop_signal = signum


def agreed_stop(state, received_signals: list) -> int:
    """The stop signal any process has received so far (the same on every process), or 0: one small gather. (In the
    loop, the gather that logs a step also agrees on its stop signal.)"""
    with fail_together(state, received_signals) as outcome:
        pass
    return outcome.stop_signal


def from_main_process(state, value: bool) -> bool:
    """The main process's decision, on every process (it alone evaluates, for example)."""
    return broadcast_object_list([value], from_process=0)[0] if state.num_processes > 1 else value


@contextmanager
def lost_processes_and_memory_are_one_line(argv: list[str]):
    """Two failures of a running process that no check can see coming, as one line, exit 1, said by every process
    that has it (the main one may be the one that ended): another process of a multi-process run ended (a kill -9,
    an out-of-memory kill, a crash), seen as gloo's error at this process's next collective operation; and torch's
    OutOfMemoryError (a GPU's memory) or its CPU allocator's failure, naming the settings that set a step's memory.
    Other errors pass on."""
    try:
        yield
    except RuntimeError as e:  # torch.distributed's DistBackendError and torch.OutOfMemoryError are ones
        reason = first_line(e)
        if lost := lost_process(e):
            what = (f"another process of this run ended while this one waited for it (gloo: {lost}); its own output "
                    "says why (an out-of-memory kill: the system log, e.g. `dmesg`); resume from the last checkpoint "
                    "with:")
        elif isinstance(e, torch.OutOfMemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(e):
            what = (f"out of memory ({type(e).__name__}: {reason}): lower mini_batch_size (the PPO update), "
                    "generation_batch_size (generation) or response_max_tokens, or train LoRA adapters (use_peft: "
                    "true); then start again, or resume where a checkpoint was saved:")
        else:
            raise
        raise RunError(f"{what} {resume_command(argv)}", code=1, every_process=True) from None


def finish(accelerator) -> None:
    """The end of a run, on every process once the main one has saved: close log_with's tracker, as
    accelerate's end_training does, and in a multi-process run exit without the process group's teardown. gloo's
    destroy_process_group hung the main process at the very end of 1 two-process run in about 40 here (and its
    threads abort a process at interpreter exit, see errors.end); every file is closed by now."""
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()
    if accelerator.num_processes > 1:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
