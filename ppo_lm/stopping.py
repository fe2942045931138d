"""How a run stops on every process at once: an error on one process, or a stop signal (SIGINT/SIGTERM).

In a multi-process run (accelerate launch) each process works on its own slice of the batch, so a reward function
can fail, or a SIGTERM can arrive, on one process only; the others would then wait forever in the next collective
operation. Phases that can fail that way run inside `together`, which every process enters: the first error, and
any stop signal received so far, reach all of them, so all stop at the same step."""

import os
import signal
import sys
from contextlib import contextmanager
from types import SimpleNamespace

from accelerate.utils import broadcast_object_list, gather_object

from ppo_lm.errors import RunError, raise_dropped_interrupt


class StopSignals(list):
    """The stop signals received so far, from install() to the end of its `with` block (the PPO loop). The first
    SIGINT/SIGTERM asks for a clean stop (checkpoint the current step, then exit); a second one exits at once,
    keeping the last checkpoint. The handlers from before are put back when the block ends, so a Ctrl-C after it (or
    in a program that called main()) interrupts as usual."""

    def __enter__(self) -> "StopSignals":
        self.earlier = {}
        return self

    def install(self) -> None:
        raise_dropped_interrupt()  # a Ctrl-C during start-up stops it, even one Python dropped
        self.earlier = {signum: signal.signal(signum, self.receive) for signum in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.earlier.items():
            signal.signal(signum, handler)

    def receive(self, signum, frame):
        if self:
            print("\nsecond interrupt: exiting now; the last checkpoint is kept", file=sys.stderr)
            os._exit(128 + signum)
        self.append(signum)
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              "(interrupt again to exit at once)", file=sys.stderr)


@contextmanager
def together(state, received_signals: list = ()):
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
    """The stop signal any process has received so far (the same on every process), or 0: one small gather, after
    the update, so a stop asked at any point of a step checkpoints that step."""
    with together(state, received_signals) as outcome:
        pass
    return outcome.stop_signal


def main_says(state, value: bool) -> bool:
    """The main process's decision, on every process (it alone evaluates, for example)."""
    return broadcast_object_list([value], from_process=0)[0] if state.num_processes > 1 else value


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
