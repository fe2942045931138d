"""Ctrl-C and SIGTERM at any point of a run: during the imports and start-up, inside a step, while the end is saved.
Each ends in one line naming what was kept and the command to resume; the faults themselves come from
tests/rewards.py (see test_faults.py)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from transformers import AutoModelForCausalLM

from conftest import ROOT, last_line, run_script, snapshot
from ppo_lm.checkpoints import list_checkpoints
from ppo_lm.metrics import read_metrics
from ppo_lm.signals import StopSignals


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


# Starts a program as a terminal does: SIGINT at its default, unblocked. A child inherits an ignored SIGINT (and
# Python then keeps ignoring it); in the full suite an earlier test leaves SIGINT ignored in pytest's process.
AS_FROM_A_TERMINAL = str(ROOT / "tests" / "scripts" / "as_from_a_terminal.py")


def run_as_from_a_terminal(*argv) -> subprocess.CompletedProcess:
    """python train_ppo.py ARGV, started as a terminal starts it (a Ctrl-C it sends itself interrupts it)."""
    return subprocess.run([sys.executable, AS_FROM_A_TERMINAL, str(ROOT / "train_ppo.py"), *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("inherited", ["SIG_DFL", "SIG_IGN"])
def test_the_start_up_handler_leaves_an_ignored_ctrl_c_ignored(inherited):
    """quiet_interrupts notes Ctrl-C where Python's own handler is in place, and leaves SIGINT ignored where the run
    was started with it ignored (`nohup`, a background job of a script), as Python itself does."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "start_up_handler.py")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, getattr(signal, inherited)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == {"SIG_DFL": "note_interrupt", "SIG_IGN": "ignored"}[inherited]


def test_ctrl_c_while_importing_is_one_line(faults, tmp_path):
    proc = subprocess.Popen([sys.executable, AS_FROM_A_TERMINAL, str(ROOT / "train_ppo.py"), "--config",
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
