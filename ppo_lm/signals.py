"""Stop signals: the first SIGINT/SIGTERM finishes the current step and checkpoints it, a second one exits at once;
the line a stop ends with, and the command that resumes the run."""

import os
import signal
import sys
from pathlib import Path

from accelerate import PartialState

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


def resume_command(argv: list[str]) -> str:
    """This run's arguments with --resume_from_checkpoint latest, on as many processes as it has (accelerate's shared
    PartialState): each step's batch is batch_size x processes, so only the same number continues it exactly."""
    num_processes = PartialState().num_processes
    resume = " ".join([sys.argv[0], *[a for a in argv if a != "--overwrite_output_dir"]])
    if "--resume_from_checkpoint" not in argv:
        resume += " --resume_from_checkpoint latest"
    if num_processes == 1:
        return f"python {resume}"
    return f"{resume} (on {num_processes} processes, launched as this run was)"


def stopped(signum: int, step: int, path: Path, argv: list[str]) -> RunError:
    """The line a stop by signal `signum` ends with: the checkpoint it saved and the command that resumes it."""
    return RunError(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved to {path}; resume "
                    f"with: {resume_command(argv)}", code=128 + signum)
