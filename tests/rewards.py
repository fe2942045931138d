"""The reward functions the tests train with, each defined once, passed to train_ppo.py as
`tests/rewards.py:NAME` (conftest.REWARDS). Each process counts its calls in OUT/calls-RANK and records its pid in
OUT/pid-RANK (the first call is the start-up check on two prompts, then one per step). The fault functions score like
`words` and add a fault at call `at`."""

import os
import signal
import time
from pathlib import Path

import torch


def _call(out) -> int:
    """This process's call count, kept in OUT/calls-RANK; its pid goes to OUT/pid-RANK."""
    rank = os.environ.get("RANK", "0")
    Path(out, f"pid-{rank}").write_text(str(os.getpid()))
    calls = Path(out, f"calls-{rank}")
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    return n


def _words(responses) -> list[float]:
    return [float(len(r.split())) for r in responses]


# plain rewards

def words(prompts, responses, out="", **kwargs):
    """The number of words of each response."""
    _call(out)
    return _words(responses)


def slow(prompts, responses, **kwargs):
    """words, 0.4 s a call: time to send a signal mid-step."""
    time.sleep(0.4)
    return _words(responses)


def slow_vader(prompts, responses, **kwargs):
    """reward.vader, 0.3 s a call."""
    from reward import vader

    time.sleep(0.3)
    return vader(prompts, responses)


def fading(prompts, responses, out="", **kwargs):
    """Lower on every call, so the first held-out evaluation is the best one."""
    return [-float(_call(out))] * len(responses)


# rewards that break the contract, or the run

def one_too_few(prompts, responses, **kwargs):
    return [0.0] * (len(responses) - 1)


def nan_at_3(prompts, responses, **kwargs):
    return [float("nan") if i == 3 else 0.0 for i in range(len(responses))]


def overflows(prompts, responses, **kwargs):
    """Finite in Python, inf once squared in float32."""
    return [3e38] * len(responses)


def raises(prompts, responses, **kwargs):
    return [1 / 0 if p.startswith("The ending") else 0.0 for p in prompts]


def fails_on_rank_1(prompts, responses, out="", **kwargs):
    """Raises on rank 1's third call only (its own slice of step 2)."""
    if _call(out) == 3 and os.environ.get("RANK") == "1":
        raise ValueError("rank 1 cannot score this")
    return _words(responses)


# faults: each scores like `words` and adds its fault at call `at`

def killed(prompts, responses, out="", at=0, **kwargs):  # kill -9 of this process while it scores
    if _call(out) == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return _words(responses)


def killed_on_rank(prompts, responses, out="", at=0, rank=1, **kwargs):  # kill -9 of one process of several
    if _call(out) == at and os.environ.get("RANK") == str(rank):
        os.kill(os.getpid(), signal.SIGKILL)
    return _words(responses)


def disk_full(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, writing optimizer.pt fails
    if _call(out) == at:
        save = torch.save

        def failing_save(obj, f, *args, **kw):
            if str(f).endswith("optimizer.pt"):
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4096")
            return save(obj, f, *args, **kw)

        torch.save = failing_save
    return _words(responses)


def disk_full_safetensors(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, model.safetensors fails
    if _call(out) == at:
        import transformers.modeling_utils
        from safetensors import SafetensorError

        def failing_save_file(*args, **kw):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        transformers.modeling_utils.safe_save_file = failing_save_file
    return _words(responses)


def tracker_disk_full(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, tensorboard's writer fails
    if _call(out) == at:                                                 # (on its own thread)
        import errno

        from tensorboard.summary.writer.record_writer import RecordWriter

        def failing_write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        RecordWriter.write = failing_write
    return _words(responses)


def disk_full_on(prompts, responses, out="", at=0, name="metrics.jsonl", **kwargs):  # from call `at` on, writing or
    if _call(out) == at:                                                              # appending to `name` fails
        import errno
        import pathlib

        open_path = pathlib.Path.open

        class Torn:  # writes half of what it is given, then the disk is full
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self.f.close()

            def write(self, text):
                self.f.write(text[: len(text) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def failing_open(self, mode="r", *args, **kw):
            f = open_path(self, mode, *args, **kw)
            return Torn(f) if self.name == name and mode[0] in "wa" else f

        pathlib.Path.open = failing_open
    return _words(responses)


def out_of_memory(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, PPOTrainer.step runs out
    if _call(out) == at:
        from trl import PPOTrainer

        def step_out_of_memory(self, *args, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                         "of 79.19 GiB of which 1.06 GiB is free.")

        PPOTrainer.step = step_out_of_memory
    return _words(responses)


def signal_in_update(prompts, responses, out="", at=0, signum=15, **kwargs):  # a signal once PPOTrainer.step begins
    if _call(out) == at:
        from trl import PPOTrainer

        step = PPOTrainer.step

        def step_with_signal(self, *args, **kw):
            os.kill(os.getpid(), signum)
            return step(self, *args, **kw)

        PPOTrainer.step = step_with_signal
    return _words(responses)


def signal_when_saved(prompts, responses, out="", at=0, signum=2, **kwargs):  # a signal as the tuned policy is saved
    if _call(out) == at:
        import sys

        script = sys.modules["__main__"]  # train_ppo.py
        save_policy = script.save_policy

        def save_with_signal(*args, **kw):
            os.kill(os.getpid(), signum)
            return save_policy(*args, **kw)

        script.save_policy = save_with_signal
    return _words(responses)


def ctrl_c_dropped(prompts, responses, out="", at=0, **kwargs):  # a Ctrl-C whose KeyboardInterrupt Python drops
    if _call(out) == at:
        class Dropping:
            def __del__(self):  # Python ignores an exception raised in a destructor ("Exception ignored in ...")
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(10))  # the handler runs (and raises) here

        Dropping()
    return _words(responses)


# for the reward contract's own tests

def shout(prompts, responses, **kwargs):
    """The number of exclamation marks of each response."""
    return [float(r.count("!")) for r in responses]


def divides_by_zero(prompts, responses, **kwargs):
    return [1 / 0 for _ in prompts]


# whole prompts: the dataset's columns reach the reward as keyword lists, in the batch's order

def uses_keyword(prompts, responses, keyword=(), row=(), out="", **kwargs):
    """1 where the response uses the row's keyword. Checks that each keyword is the one of its own prompt (the columns
    came in the batch's order) and records the rows it saw in OUT/rows-RANK (one line a call)."""
    for prompt, word in zip(prompts, keyword, strict=True):
        if f"use the word {word}." not in prompt:
            raise ValueError(f"keyword {word!r} is not the one of prompt {prompt!r}")
    if out:
        with Path(out, f"rows-{os.environ.get('RANK', '0')}").open("a") as f:
            f.write(" ".join(map(str, row)) + "\n")
    return [float(word in response.split()) for response, word in zip(responses, keyword)]


def zero(prompts, responses, **kwargs):
    return [0.0] * len(responses)


def needs_answer(prompts, responses, *, answer, **kwargs):
    """Needs the dataset's `answer` column (a column the instructions lack: the start-up probe must say so)."""
    return [float(a in r) for a, r in zip(answer, responses)]


def one(prompts, responses, **kwargs):
    return [1.0] * len(responses)
