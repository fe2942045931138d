"""Errors a user can fix, and how an error or a stop signal on one process ends every process of a run.

A RunError is printed as one line (`error: ...`) and the script exits with its code. In a multi-process run
(accelerate launch) each process works on its own slice of the batch, so a reward function can fail, or a SIGTERM
can arrive, on one process only; the others would then wait forever in the next collective operation. Phases that
can fail that way run inside `together`, which every process enters: the first error, and any stop signal,
reach all of them, so all stop at the same step.
"""

from contextlib import contextmanager
from types import SimpleNamespace

from accelerate.utils import gather_object


class RunError(Exception):
    """An error the user can fix; train_ppo.py prints its one-line message and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


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
