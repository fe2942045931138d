"""Never lose a run: checkpoints, resume after a kill, clean stops, and one-line errors for bad input."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REWARDS, ROOT, run_script
from ppo_lm.checkpoints import find_checkpoint, list_checkpoints
from ppo_lm.metrics import read_metrics



def start(config, *argv):
    return subprocess.Popen([sys.executable, str(ROOT / "train_ppo.py"), "--config", str(config), *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def slow_config(tiny_config, tmp_path):
    return tiny_config(reward_fn=f"{REWARDS}:slow", steps=8, save_steps=2, save_total_limit=3)


def optimizer_steps(checkpoint) -> int:
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    return int(next(iter(state.values()))["step"])


def test_resume_after_sigkill(slow_config, tmp_path):
    out = tmp_path / "run"
    proc = start(slow_config)
    wait_for(lambda: len(list_checkpoints(out)) >= 2 or proc.poll() is not None)  # step-2 and step-4 exist
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    assert killed_at < 8
    latest = find_checkpoint(out, "latest")
    saved = json.loads((latest / "trainer_state.json").read_text())

    result = run_script("--config", slow_config, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert f"resumed from {latest} at step {saved['step']}" in result.stderr
    assert "was saved by a run on" not in result.stderr  # as many processes as before: no note

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))  # no gap, no duplicate
    assert rows[saved["step"]]["objective/kl_coef"] == pytest.approx(saved["kl_coef"], rel=1e-6)  # beta restored
    # Adam's step count: 8 PPO steps x 4 epochs x (16 / 8) minibatches, so the first steps' state came along
    assert optimizer_steps(out / "checkpoint-8") == 8 * 4 * 2


def test_sigint_checkpoints_and_says_how_to_resume(slow_config, tmp_path):
    out = tmp_path / "run"
    proc = start(slow_config, "--save_steps", "100")
    wait_for(lambda: len(read_metrics(out / "metrics.jsonl")) >= 1 or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    last_line = stderr.strip().splitlines()[-1]
    step = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    assert last_line == (f"error: stopped by SIGINT after step {step}; checkpoint saved to "
                         f"{out}/checkpoint-{step}; resume with: python {ROOT / 'train_ppo.py'} "
                         f"--config {slow_config} --save_steps 100 --resume_from_checkpoint latest")
    assert list_checkpoints(out) == [out / f"checkpoint-{step}"]

    result = run_script("--config", slow_config, "--save_steps", "100", "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 9))


def test_second_sigint_exits_at_once(slow_config, tmp_path):
    out = tmp_path / "run"
    proc = start(slow_config, "--save_steps", "1")
    wait_for(lambda: len(list_checkpoints(out)) >= 1 or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == "second interrupt: exiting now; the last checkpoint is kept"
    assert find_checkpoint(out, "true").name.startswith("checkpoint-")


def test_latest_skips_a_checkpoint_killed_mid_write(slow_config, tmp_path):
    out = tmp_path / "run"
    assert run_script("--config", slow_config, "--steps", "4").returncode == 0
    # a kill during the write leaves the temporary directory (or, at worst, one without trainer_state.json)
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6.tmp")
    partial = out / "checkpoint-8"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    assert find_checkpoint(out, "latest") == out / "checkpoint-4"

    result = run_script("--config", slow_config, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr
    assert "at step 4" in result.stderr
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 9))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(slow_config, tmp_path):
    out = tmp_path / "run"
    assert run_script("--config", slow_config, "--steps", "2").returncode == 0
    before = (out / "checkpoint-2" / "model.safetensors").read_bytes()
    result = run_script("--config", slow_config, "--steps", "4", "--resume_from_checkpoint", "latest",
                        "--reward_fn", f"{REWARDS}:overflows")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 3: ") and "training diverged" in last, last
    assert last.endswith(f"last good checkpoint: {out}/checkpoint-2")
    assert (out / "checkpoint-2" / "model.safetensors").read_bytes() == before
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_weights_blown_up_stop_the_run_in_one_line(slow_config, tmp_path):
    """A learning rate so large the weights overflow: the run stops as diverged (exit 1, one line), not with a
    traceback from torch.multinomial in the next generate()."""
    result = run_script("--config", slow_config, "--learning_rate", "1e30", "--steps", "3")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step ") and "training diverged" in last, last


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
