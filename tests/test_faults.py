"""Faults are inputs too: a failed start, a kill -9, a full disk, a damaged checkpoint or metrics file, a signal at
any point. Each ends in one line, and nothing already saved is lost: the run can be resumed once the cause is gone.

Faults at an exact point of a run are made by the run's own reward file (it is imported into the training
process): it kills its process, patches torch.save to fail as on a full disk, or sends a signal when PPOTrainer.step
begins."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT, run_launched, run_script, snapshot
from ppo_lm.checkpoints import list_checkpoints
from ppo_lm.metrics import read_metrics
from ppo_lm.stopping import StopSignals

# `words` scores like a plain reward. Each process counts its calls in OUT/calls-RANK (the first call is the start-up
# check on two prompts, then one per step); the other functions score the same and add a fault at call `at`.
FAULTS = '''
import os
import signal
from pathlib import Path

import torch


def _call(out):
    calls = Path(out, f"calls-{os.environ.get('RANK', '0')}")
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    return n


def words(prompts, responses, out="", **kwargs):
    _call(out)
    return [float(len(r.split())) for r in responses]


def killed(prompts, responses, out="", at=0, **kwargs):  # kill -9 of this process while it scores
    if _call(out) == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return [float(len(r.split())) for r in responses]


def killed_on_rank(prompts, responses, out="", at=0, rank=1, **kwargs):  # kill -9 of one process of several
    if _call(out) == at and os.environ.get("RANK") == str(rank):
        os.kill(os.getpid(), signal.SIGKILL)
    return [float(len(r.split())) for r in responses]


def disk_full(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, writing optimizer.pt fails
    if _call(out) == at:
        save = torch.save

        def failing_save(obj, f, *args, **kw):
            if str(f).endswith("optimizer.pt"):
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4096")
            return save(obj, f, *args, **kw)

        torch.save = failing_save
    return [float(len(r.split())) for r in responses]


def disk_full_safetensors(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, model.safetensors fails
    if _call(out) == at:
        import transformers.modeling_utils
        from safetensors import SafetensorError

        def failing_save_file(*args, **kw):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        transformers.modeling_utils.safe_save_file = failing_save_file
    return [float(len(r.split())) for r in responses]


def tracker_disk_full(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, tensorboard's writer fails
    if _call(out) == at:                                                 # (on its own thread)
        import errno

        from tensorboard.summary.writer.record_writer import RecordWriter

        def failing_write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        RecordWriter.write = failing_write
    return [float(len(r.split())) for r in responses]


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
    return [float(len(r.split())) for r in responses]


def out_of_memory(prompts, responses, out="", at=0, **kwargs):  # from call `at` on, PPOTrainer.step runs out
    if _call(out) == at:
        from trl import PPOTrainer

        def step_out_of_memory(self, *args, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                         "of 79.19 GiB of which 1.06 GiB is free.")

        PPOTrainer.step = step_out_of_memory
    return [float(len(r.split())) for r in responses]


def signal_in_update(prompts, responses, out="", at=0, signum=15, **kwargs):  # a signal once PPOTrainer.step begins
    if _call(out) == at:
        from trl import PPOTrainer

        step = PPOTrainer.step

        def step_with_signal(self, *args, **kw):
            os.kill(os.getpid(), signum)
            return step(self, *args, **kw)

        PPOTrainer.step = step_with_signal
    return [float(len(r.split())) for r in responses]


def signal_when_saved(prompts, responses, out="", at=0, signum=2, **kwargs):  # a signal as the tuned policy is saved
    if _call(out) == at:
        import sys

        script = sys.modules["__main__"]  # train_ppo.py
        save_policy = script.save_policy

        def save_with_signal(*args, **kw):
            os.kill(os.getpid(), signum)
            return save_policy(*args, **kw)

        script.save_policy = save_with_signal
    return [float(len(r.split())) for r in responses]


def ctrl_c_dropped(prompts, responses, out="", at=0, **kwargs):  # a Ctrl-C whose KeyboardInterrupt Python drops
    if _call(out) == at:
        class Dropping:
            def __del__(self):  # Python ignores an exception raised in a destructor ("Exception ignored in ...")
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(10))  # the handler runs (and raises) here

        Dropping()
    return [float(len(r.split())) for r in responses]
'''
ROWS = ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "ppo/loss/total",
        "ppo/policy/approxkl", "tokens/responses_len_mean"]


@pytest.fixture
def faults(tiny_config, tmp_path):
    """config(fault, at=call, **settings) -> a config whose reward is faults.py:`fault`."""
    (tmp_path / "faults.py").write_text(FAULTS)

    def config(fault="words", at=0, **settings):  # the fault's own arguments (signum, name, rank) among settings
        for calls in tmp_path.glob("calls-*"):
            calls.unlink()
        arguments = {k: settings.pop(k) for k in ("signum", "name", "rank") if k in settings}
        return tiny_config(reward_fn=f"{tmp_path / 'faults.py'}:{fault}",
                           reward_kwargs={"out": str(tmp_path), "at": at, **arguments}, **settings)

    return config


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def assert_same_rows(resumed, uninterrupted, after_step):
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    for a, b in zip(resumed[after_step:], uninterrupted[after_step:]):
        for key in ROWS:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished 2-step run with checkpoint-1 and checkpoint-2 (save_steps 1), copied into each test's output_dir."""
    root = tmp_path_factory.mktemp("finished")
    config = root / "finished.yaml"
    config.write_text(json.dumps({"model_name_or_path": tiny["policy"], "dataset_name": tiny["data"],
                                  "min_text_length": 20, "reward_fn": "vader", "batch_size": 16,
                                  "mini_batch_size": 8, "steps": 2, "save_steps": 1, "sample_every": 0,
                                  "output_dir": str(root / "run")}))
    assert run_script("--config", config).returncode == 0
    return root / "run"


@pytest.fixture
def copy_of_finished(finished, tiny_config, tmp_path):
    """(output_dir, config): the finished run in this test's output_dir, and a config that resumes it to step 3."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run", tiny_config(reward_fn="vader", steps=3)


def test_a_failed_overwrite_start_keeps_the_earlier_run(copy_of_finished, faults):
    """--overwrite_output_dir, then a kill -9 before the first step is logged: the earlier run is aside, not gone,
    and the next start in that directory puts it back exactly."""
    out, _ = copy_of_finished
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)

    killed = run_script("--config", faults("killed", at=2, steps=2), "--overwrite_output_dir")  # in step 1's scoring
    assert killed.returncode == -signal.SIGKILL
    assert (out / ".replaced-run" / "checkpoint-2").is_dir() and not (out / "checkpoint-2").exists()

    again = run_script("--config", faults(steps=2))  # no overwrite: restored, then refused as an earlier run
    assert again.returncode == 2
    assert "restored the earlier run in" in again.stderr
    assert last_line(again.stderr).startswith(f"error: output_dir '{out}' holds an earlier run")
    assert snapshot(out) == before


def test_a_resume_on_another_number_of_processes_says_what_changes(copy_of_finished):
    """A checkpoint written by a 2-process run (its trainer_state.json says so), resumed on 1 process: allowed, as
    other settings may change on a resume, but one line says that each step's batch and the prompts' order change."""
    out, config = copy_of_finished
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["num_processes"] == 1
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state | {"num_processes": 2}))
    result = run_script("--config", config, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert ("note: checkpoint-2 was saved by a run on 2 process(es), and this one has 1: each step's batch is now "
            "16 episodes (batch_size x processes) instead of 32, and the prompts come in another order from here on; "
            "resume on 2 to continue the run exactly") in result.stderr.splitlines()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_overwrite_removes_sharded_weights_and_keeps_the_users_files(copy_of_finished, faults, tiny):
    out, _ = copy_of_finished
    AutoModelForCausalLM.from_pretrained(tiny["policy"]).save_pretrained(out, max_shard_size="40KB")
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "model-notes.txt").write_text("mine too")

    result = run_script("--config", faults(steps=1), "--overwrite_output_dir")
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert not set(shards) & names and "model.safetensors.index.json" not in names
    assert {"notes.txt", "model-notes.txt", "model.safetensors", "checkpoint-1"} <= names
    assert "checkpoint-2" not in names  # the earlier run's
    assert not (out / ".replaced-run").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_stop_during_the_update_checkpoints_that_step(faults, tmp_path, signum):
    """The signal arrives when PPOTrainer.step of step 3 begins (after the scoring phase agreed there was no stop):
    the run checkpoints step 3, not step 4."""
    out = tmp_path / "run"
    result = run_script("--config", faults("signal_in_update", at=4, signum=int(signum), steps=6, save_steps=100))
    assert result.returncode == 128 + signum, result.stderr
    assert last_line(result.stderr).startswith(f"error: stopped by {signum.name} after step 3; checkpoint saved to "
                                               f"{out}/checkpoint-3; resume with: ")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert list_checkpoints(out) == [out / "checkpoint-3"]


def run_processes(n: int, config, *argv) -> list[subprocess.CompletedProcess]:
    if n == 1:
        return [run_script("--config", config, *argv)]
    codes, stderr = run_launched(n, config, *argv)
    return [subprocess.CompletedProcess([], code, "", err) for code, err in zip(codes, stderr)]


@pytest.mark.parametrize("processes", [1, 2])
def test_lora_kill_9_and_resume_is_exact(faults, tmp_path, processes):
    """The default job is LoRA: killed with SIGKILL in step 5 (after checkpoint-4), resumed from the latest
    checkpoint, it logs the same rows as an uninterrupted run; save_total_limit keeps exactly 2 checkpoints."""
    settings = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "steps": 6, "save_steps": 2, "save_total_limit": 2,
                "learning_rate": 1e-3}
    if processes == 2:
        settings |= {"batch_size": 8, "mini_batch_size": 4}
    out = tmp_path / "run"
    results = run_processes(processes, faults("killed", at=6, **settings))
    assert all(r.returncode == -signal.SIGKILL for r in results), [r.stderr for r in results]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoint-4" / "adapter_model.safetensors").is_file()

    results = run_processes(processes, faults(**settings), "--resume_from_checkpoint", "latest")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert "at step 4" in results[0].stderr
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]  # pruned to the limit

    results = run_processes(processes, faults(**settings), "--output_dir", tmp_path / "uninterrupted")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert_same_rows(read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl"),
                     after_step=4)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_killed_alone_leaves_one_line_on_the_other(faults, tmp_path, rank):
    """kill -9 of one process of two as it scores step 3 (an out-of-memory kill looks the same): the other one's
    next collective operation fails in gloo; it ends with one line, exit 1, even where the killed one is the main
    process, and the command in it resumes from checkpoint-2 (run once, for rank 1)."""
    settings = {"batch_size": 8, "mini_batch_size": 4, "steps": 4, "save_steps": 2}
    config = faults("killed_on_rank", at=4, rank=rank, **settings)
    results = run_processes(2, config)
    assert results[rank].returncode == -signal.SIGKILL, [r.stderr for r in results]
    other = results[1 - rank]
    assert other.returncode == 1, other.stderr
    assert "Traceback" not in other.stderr
    line = last_line(other.stderr)  # the peer's socket is closed or reset, as timing has it
    assert re.fullmatch(r"error: another process of this run ended while this one waited for it \(gloo: Connection "
                        r"(closed|reset) by peer\); its own output says why \(an out-of-memory kill: the system log, "
                        r"e\.g\. `dmesg`\); resume from the last checkpoint with: (.+)", line), line
    assert line.endswith(f"with: {ROOT / 'train_ppo.py'} --config {config} --resume_from_checkpoint latest (on 2 "
                         "processes, launched as this run was)")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]

    if rank == 1:  # the resume, once
        results = run_processes(2, faults(**settings), "--resume_from_checkpoint", "latest")
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_out_of_memory_is_one_line_naming_the_settings(faults, tmp_path):
    out = tmp_path / "run"
    config = faults("out_of_memory", at=4, steps=4, save_steps=2)  # the update of step 3
    result = run_script("--config", config)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr) == (
        "error: out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
        "capacity of 79.19 GiB of which 1.06 GiB is free.): lower mini_batch_size (the PPO update), "
        "generation_batch_size (generation) or response_max_tokens, or train LoRA adapters (use_peft: true); then "
        f"start again, or resume where a checkpoint was saved: python {ROOT / 'train_ppo.py'} --config {config} "
        "--resume_from_checkpoint latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # resumed as in the tests below
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(faults, tmp_path):
    out = tmp_path / "run"
    result = run_script("--config", faults("disk_full", at=4, steps=6, save_steps=2))  # fails writing checkpoint-4
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith(f"error: could not write checkpoint 4 to {out}/checkpoint-4.tmp "
                                               "(RuntimeError: ")
    assert last_line(result.stderr).endswith("free disk space (or fix the permissions) there, then resume with "
                                             "--resume_from_checkpoint latest")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]

    resumed = run_script("--config", faults(steps=6, save_steps=2), "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 7))


def test_a_full_disk_while_a_checkpoints_weights_are_written_keeps_the_last_one(faults, tmp_path):
    """safetensors' own error (not an OSError) on a full disk, as the policy's weights are written."""
    out = tmp_path / "run"
    result = run_script("--config", faults("disk_full_safetensors", at=4, steps=6, save_steps=2))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr) == (
        f"error: could not write checkpoint 4 to {out}/checkpoint-4.tmp (SafetensorError: Error while serializing: "
        "I/O error: No space left on device (os error 28)): free disk space (or fix the permissions) there, then "
        "resume with --resume_from_checkpoint latest")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_full_disk_while_metrics_are_appended_ends_in_one_line_and_resumes(faults, tmp_path):
    """Half of step 3's row is written, then the disk is full: one line, exit 1 on both processes (the main one
    writes); the resume drops the torn line and continues from checkpoint-2. (One process: the tests below.)"""
    out = tmp_path / "run"
    processes, settings = 2, {"steps": 4, "save_steps": 2, "batch_size": 8, "mini_batch_size": 4}
    results = run_processes(processes, faults("disk_full_on", at=4, **settings))
    assert all(r.returncode == 1 for r in results), [r.stderr for r in results]
    assert not any("Traceback" in r.stderr for r in results), [r.stderr for r in results]
    assert last_line(results[0].stderr) == (
        f"error: could not write step 3's metrics to {out}/metrics.jsonl (OSError: [Errno 28] No space left on "
        "device): free disk space (or fix the permissions) there, then resume with --resume_from_checkpoint latest")
    assert (out / "metrics.jsonl").read_text().count("\n") == 2  # rows 1 and 2, and half of row 3

    results = run_processes(processes, faults(**settings), "--resume_from_checkpoint", "latest")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert "dropped the torn last line" in results[0].stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_full_disk_under_tensorboard_is_one_line_not_its_threads_traceback(faults, tmp_path):
    """tensorboard writes its events on a thread of its own: the write fails there, the thread's traceback is not
    printed, and the failure, raised again at the next log, ends the run in one line."""
    out = tmp_path / "run"
    settings = {"steps": 4, "save_steps": 2, "log_with": "tensorboard"}
    result = run_script("--config", faults("tracker_disk_full", at=4, **settings))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    assert last_line(result.stderr) == (
        f"error: could not write step 3's tracker logs to {out}/logs (OSError: [Errno 28] No space left on device): "
        "free disk space (or fix the permissions) there, then resume with --resume_from_checkpoint latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # resumed as in the tests around it


def test_a_full_disk_before_the_first_checkpoint_says_start_again(copy_of_finished, faults):
    """The first step's row cannot be written: the start is undone (here: the earlier run that
    --overwrite_output_dir was replacing is put back), and the line says to start again, as no checkpoint exists."""
    out, _ = copy_of_finished
    before = snapshot(out)
    result = run_script("--config", faults("disk_full_on", at=2), "--overwrite_output_dir")
    assert result.returncode == 1, result.stderr
    assert last_line(result.stderr) == (
        f"error: could not write step 1's metrics to {out}/metrics.jsonl (OSError: [Errno 28] No space left on "
        "device): free disk space (or fix the permissions) there, then start the run again with "
        "--overwrite_output_dir (no checkpoint was saved yet)")
    assert snapshot(out) == before


def test_a_full_disk_while_the_report_is_written_keeps_the_policy_and_writes_it_on_resume(faults, tiny, tmp_path):
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The film was\nThe cast\n")
    config = faults("disk_full_on", at=3, name="eval.md", steps=2, eval_file=str(prompts))
    result = run_script("--config", config)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr) == (
        f"error: could not write the end-of-run report to {out} (OSError: [Errno 28] No space left on device): free "
        "disk space (or fix the permissions) there, then resume with --resume_from_checkpoint latest")
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2

    result = run_script("--config", faults(steps=2, eval_file=str(prompts)), "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert (out / "eval.md").read_text().startswith("#") and "held-out" in (out / "README.md").read_text()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def tampered(path):  # a pickle that would run code if torch.load were not weights_only
    path.write_bytes(pickle.dumps(shutil.rmtree))


def does_not_fit(path):  # the optimizer state of another model
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    other.step()
    torch.save(other.state_dict(), path)


@pytest.mark.parametrize("fault, message", [
    (lambda c: (c / "optimizer.pt").unlink(),
     "error: checkpoint {c} is incomplete: optimizer.pt missing; resume from another checkpoint-N"),
    (lambda c: (c / "model.safetensors").unlink(),
     "error: checkpoint {c} is incomplete: model weights (model.safetensors or "),
    (lambda c: tampered(c / "optimizer.pt"), "error: checkpoint file {c}/optimizer.pt cannot be read (UnpicklingError"),
    (lambda c: (c / "rng-0.pt").write_bytes((c / "rng-0.pt").read_bytes()[:100]),
     "error: checkpoint file {c}/rng-0.pt cannot be read ("),
    (lambda c: (c / "trainer_state.json").write_text('{"step": 2, "kl'),
     "error: checkpoint file {c}/trainer_state.json cannot be read (JSONDecodeError"),
    (lambda c: does_not_fit(c / "optimizer.pt"),
     "error: resume_from_checkpoint '{c}': its optimizer state does not fit this model"),
], ids=["missing-optimizer", "missing-weights", "tampered-optimizer", "torn-rng", "torn-state", "optimizer-misfit"])
def test_a_damaged_checkpoint_is_named_in_one_line(copy_of_finished, fault, message):
    out, config = copy_of_finished
    fault(out / "checkpoint-2")
    before = snapshot(out)
    result = run_script("--config", config, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith(message.format(c=out / "checkpoint-2")), last_line(result.stderr)
    assert snapshot(out) == before


def test_after_a_damaged_checkpoint_the_one_before_resumes(copy_of_finished):
    out, config = copy_of_finished
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    assert run_script("--config", config, "--resume_from_checkpoint", "latest").returncode == 2
    result = run_script("--config", config, "--resume_from_checkpoint", str(out / "checkpoint-1"))
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_a_torn_metrics_line_is_dropped_on_resume(copy_of_finished):
    out, config = copy_of_finished
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "env/episodes": 16, "env/rew')  # what a kill -9 during the write leaves
    result = run_script("--config", config, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert f"note: dropped the torn last line of {out / 'metrics.jsonl'}" in result.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


# Starts a program as a terminal does: SIGINT at its default, unblocked. A child inherits an ignored SIGINT (and
# Python then keeps ignoring it); in the full suite an earlier test leaves SIGINT ignored in pytest's process.
AS_FROM_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                      "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def run_as_from_a_terminal(*argv) -> subprocess.CompletedProcess:
    """python train_ppo.py ARGV, started as a terminal starts it (a Ctrl-C it sends itself interrupts it)."""
    return subprocess.run([sys.executable, "-c", AS_FROM_A_TERMINAL, str(ROOT / "train_ppo.py"), *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("inherited", ["SIG_DFL", "SIG_IGN"])
def test_the_start_up_handler_leaves_an_ignored_ctrl_c_ignored(inherited):
    """quiet_interrupts notes Ctrl-C where Python's own handler is in place, and leaves SIGINT ignored where the run
    was started with it ignored (`nohup`, a background job of a script), as Python itself does."""
    code = ("import signal; from ppo_lm.errors import quiet_interrupts; quiet_interrupts(); "
            "handler = signal.getsignal(signal.SIGINT); "
            "print('ignored' if handler is signal.SIG_IGN else handler.__name__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, getattr(signal, inherited)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == {"SIG_DFL": "note_interrupt", "SIG_IGN": "ignored"}[inherited]


def test_ctrl_c_while_importing_is_one_line(faults, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, str(ROOT / "train_ppo.py"), "--config",
                             str(faults())], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})
    time.sleep(1.5)  # python is up and importing torch / transformers / TRL (several seconds here)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert last_line(stderr).startswith("error: interrupted (Ctrl-C) during start-up, before the first PPO step")
    assert not (tmp_path / "run").exists()


def test_a_ctrl_c_python_drops_still_stops_the_start_up(copy_of_finished, faults):
    """A start-up Ctrl-C that lands in a destructor, where Python drops its KeyboardInterrupt (one came while a
    `regex` object was collected during the imports, and the run trained to the end): the start still
    stops before the first step, with the start-up line, and the earlier run it was replacing is as it was."""
    out, _ = copy_of_finished
    before = snapshot(out)
    config = faults("ctrl_c_dropped", at=1, steps=2)  # call 1: the start-up check of the reward function
    result = run_as_from_a_terminal("--config", config, "--overwrite_output_dir")
    assert "Exception ignored in" in result.stderr  # the fault worked: Python dropped the KeyboardInterrupt
    assert result.returncode == 130, result.stderr
    assert last_line(result.stderr).startswith("error: interrupted (Ctrl-C) during start-up, before the first PPO step")
    assert snapshot(out) == before


def test_ctrl_c_while_saving_the_end_says_the_checkpoint_holds_the_run(faults, tmp_path):
    """Ctrl-C after the last step, as the tuned policy is being saved: the loop's stop handlers are gone (one Ctrl-C
    interrupts), one line says which checkpoint holds the training, and its command saves and reports it."""
    out = tmp_path / "run"
    config = faults("signal_when_saved", at=3, signum=int(signal.SIGINT), steps=2)  # call 3: the scoring of step 2
    result = run_as_from_a_terminal("--config", config)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "finishing this step" not in result.stderr
    assert last_line(result.stderr) == (
        f"error: interrupted (Ctrl-C) while saving the tuned policy and the report; the training is in "
        f"{out}/checkpoint-2: save and report it with: python {ROOT / 'train_ppo.py'} --config {config} "
        f"--resume_from_checkpoint latest")
    assert not (out / "model.safetensors").exists()

    result = run_script("--config", config, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2


def test_the_stop_handlers_last_as_long_as_the_loop():
    """Inside the loop a SIGTERM is recorded for a clean stop; after it the earlier handlers are back, so a program
    that calls main() (the bench's --to_target) keeps its own Ctrl-C."""
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with StopSignals() as received:
        received.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


def test_all_linear_adapts_every_linear_layer(faults, tmp_path):
    out = tmp_path / "run"
    config = faults(use_peft=True, lora_target_modules="all-linear", steps=1)
    result = run_script("--config", config)
    assert result.returncode == 0, result.stderr
    adapted = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    # every Conv1D of the tiny GPT-2's 2 blocks (peft's all-linear; the output layer is left out)
    assert len(adapted) == 8 and {name.rsplit(".", 1)[-1] for name in adapted} == {"c_attn", "c_proj", "c_fc"}


def test_ref_model_and_biased_sampling_warning(faults, tiny, tmp_path):
    """A separate reference model directory is loaded as the reference; sampling settings other than the policy's
    own distribution are warned about."""
    reference = AutoModelForCausalLM.from_pretrained(tiny["policy"])
    torch.manual_seed(0)
    with torch.no_grad():
        reference.transformer.h[0].mlp.c_fc.weight.add_(torch.randn_like(reference.transformer.h[0].mlp.c_fc.weight))
    reference.save_pretrained(tmp_path / "reference")
    result = run_script("--config", faults(steps=1, ref_model_name_or_path=str(tmp_path / "reference"), top_k=5))
    assert result.returncode == 0, result.stderr
    assert "sample from a distribution other than the policy's" in result.stderr
    assert "{'top_k': 5}" in result.stderr
    # step 1's KL is measured before its update, with the policy still the tiny model itself: a KL above 0 can
    # only come from the other reference
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["objective/kl"] > 0.01
