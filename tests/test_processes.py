"""Two processes of one CPU run (gloo): the global batch is split, the main process alone writes, and an error or a
stop signal on one process ends both at the same step."""

import signal
import time

import pytest

from transformers import AutoModelForCausalLM

from ppo_lm.checkpoints import list_checkpoints
from conftest import REWARDS, ROOT, run_launched, sigterm_to_rank_1_after
from ppo_lm.metrics import read_metrics



def run_two(config, *argv, on_start=None, timeout=240):
    return run_launched(2, config, *argv, on_start=on_start, timeout=timeout)


def test_two_processes_split_the_batch_and_one_writes(tiny_config, tmp_path):
    (tmp_path / "held_out.txt").write_text("The film was\nThe plot\n")
    config = tiny_config(reward_fn=f"{REWARDS}:words", reward_kwargs={"out": str(tmp_path)},
                         batch_size=8, mini_batch_size=4, steps=3, save_steps=2,
                         eval_file=str(tmp_path / "held_out.txt"))
    codes, stderr = run_two(config)
    assert codes == [0, 0], stderr
    out = tmp_path / "run"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["env/episodes"] == 16 for r in rows)  # 8 per process, gathered from both
    # start-up + 3 steps on each, and the held-out report's two scorings (before, after) on the main process
    assert (tmp_path / "calls-0").read_text() == "6" and (tmp_path / "calls-1").read_text() == "4"
    assert stderr[0].count("saved the tuned policy") == 1 and "saved the tuned policy" not in stderr[1]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2
    assert f"held-out {REWARDS}:words: mean" in stderr[0]  # evaluated by the main process alone


def test_an_error_on_one_process_ends_both_with_one_line(tiny_config, tmp_path):
    config = tiny_config(reward_fn=f"{REWARDS}:fails_on_rank_1", reward_kwargs={"out": str(tmp_path)},
                         batch_size=8, mini_batch_size=4, steps=4, save_steps=1)
    start = time.time()
    codes, stderr = run_two(config, timeout=120)
    assert codes == [2, 2], stderr
    assert time.time() - start < 120
    lines = [line for err in stderr for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and stderr[0].strip().splitlines()[-1] == lines[0]  # said once, by the main process
    assert lines[0].startswith("error: reward function 'fails_on_rank_1' raised ValueError: rank 1 cannot score this")
    assert not any("Traceback" in err for err in stderr)
    out = tmp_path / "run"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]


def test_sigterm_to_one_process_checkpoints_once_and_the_resume_is_exact(tiny_config, tmp_path):
    """SIGTERM to rank 1 only: both processes checkpoint the same step and stop; the resumed run then logs the same
    rows as an uninterrupted run with the same seed (per-process RNG states, optimizer, beta, TRL's step counter)."""
    config = tiny_config(reward_fn=f"{REWARDS}:words", reward_kwargs={"out": str(tmp_path)},
                         batch_size=8, mini_batch_size=4, steps=8, save_steps=100)
    out = tmp_path / "run"

    codes, stderr = run_two(config, on_start=sigterm_to_rank_1_after(1, out))
    assert codes == [128 + signal.SIGTERM] * 2, stderr
    step = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    assert step < 8
    last = stderr[0].strip().splitlines()[-1]
    assert last == (f"error: stopped by SIGTERM after step {step}; checkpoint saved to {out}/checkpoint-{step}; "
                    f"resume with: {ROOT / 'train_ppo.py'} --config {config} --resume_from_checkpoint latest "
                    "(on 2 processes, launched as this run was)")
    assert not any(line.startswith("error:") for line in stderr[1].splitlines())
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{step}"]
    assert sorted(p.name for p in (out / f"checkpoint-{step}").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]

    codes, stderr = run_two(config, "--resume_from_checkpoint", "latest")
    assert codes == [0, 0], stderr
    resumed = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))

    codes, stderr = run_two(config, "--output_dir", tmp_path / "uninterrupted")
    assert codes == [0, 0], stderr
    uninterrupted = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    for a, b in zip(resumed[step:], uninterrupted[step:]):  # the rows after the resume point
        for key in ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "ppo/loss/total",
                    "ppo/policy/approxkl", "tokens/responses_len_mean"]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
