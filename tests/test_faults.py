"""Faults are inputs too: a failed start, a kill -9, a process lost, out of memory, a full disk, a damaged checkpoint or
metrics file. Each ends in one line, and nothing already saved is lost: the run can be resumed once the cause is gone.
(Signals and Ctrl-C: test_interrupts.py.)

Faults at an exact point of a run are made by the run's own reward file (it is imported into the training
process): it kills its process, patches torch.save to fail as on a full disk, or sends a signal when PPOTrainer.step
begins."""

import pickle
import re
import shutil
import signal
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT, assert_same_rows, last_line, run_launched, run_script, snapshot
from ppo_lm.checkpoints import list_checkpoints
from ppo_lm.metrics import read_metrics

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
