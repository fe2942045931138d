"""eval_steps: held-out evaluations during training, as the end-of-run report measures them, on one process and on
two; the best step's checkpoint survives pruning and the model card names it; a resume continues the rows."""

import signal

import pytest

from conftest import REWARDS, run_launched, run_script, sigterm_to_rank_1_after
from ppo_lm.checkpoints import list_checkpoints
from ppo_lm.metrics import read_metrics



@pytest.fixture
def held_out(tmp_path):
    (tmp_path / "held_out.txt").write_text("The film was\nThe plot\nThe acting felt\nThis movie\n")
    return {"eval_file": str(tmp_path / "held_out.txt"), "eval_steps": 2, "eval_samples": 3}


def test_eval_rows_leave_training_as_it_was(tiny_config, tmp_path, held_out):
    """Rows eval/... at steps 2, 4, 6; the training rows are those of a run without them (the RNG is forked)."""
    with_eval = run_script("--config", tiny_config(reward_fn="vader", steps=6, **held_out))
    assert with_eval.returncode == 0, with_eval.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval/reward" in r] == [2, 4, 6]
    assert all({"eval/kl", "eval/seconds", "eval/reward_reference"} <= set(r) for r in rows if "eval/reward" in r)
    assert len({r["eval/reward_reference"] for r in rows if "eval/reward" in r}) == 1  # the frozen reference, once
    without = run_script("--config", tiny_config(reward_fn="vader", steps=6, eval_file=held_out["eval_file"]),
                         "--output_dir", tmp_path / "without")
    assert without.returncode == 0, without.stderr
    for a, b in zip(rows, read_metrics(tmp_path / "without" / "metrics.jsonl")):
        assert a["env/reward_mean"] == b["env/reward_mean"] and a["objective/kl"] == b["objective/kl"]

    from ppo_lm.plots import plot_frontier  # the frontier: drawn from the runs with held-out evaluations, None without

    assert plot_frontier([tmp_path / "run", tmp_path / "without"], tmp_path / "f.png") == tmp_path / "f.png"
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert plot_frontier([tmp_path / "without"], tmp_path / "none.png") is None


def test_the_best_checkpoint_is_kept_and_named(tiny_config, tmp_path, held_out):
    config = tiny_config(reward_fn=f"{REWARDS}:fading", reward_kwargs={"out": str(tmp_path)},
                         steps=6, save_steps=100, save_total_limit=1, **held_out)
    result = run_script("--config", config)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-6"]  # best + newest
    assert "Best held-out step within the KL target** (evaluations every `eval_steps` = 2 steps on 3 prompts): " \
           "step 2, reward " in (out / "README.md").read_text()


def test_eval_steps_on_two_processes_and_a_resume(tiny_config, tmp_path, held_out):
    config = tiny_config(reward_fn=f"{REWARDS}:slow_vader", batch_size=8, mini_batch_size=4,
                         steps=6, save_steps=100, **held_out)
    out = tmp_path / "run"

    codes, errors = run_launched(2, config, on_start=sigterm_to_rank_1_after(3, out))
    assert codes == [128 + signal.SIGTERM] * 2, errors
    stopped_at = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))

    codes, errors = run_launched(2, config, "--resume_from_checkpoint", "latest")
    assert codes == [0, 0], errors
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7)), stopped_at
    assert [r["step"] for r in rows if "eval/reward" in r] == [2, 4, 6]  # each once, across the resume
