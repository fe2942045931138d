"""The real script, run as a user runs it, on tiny local models."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import AutoModelForCausalLMWithValueHead

from conftest import run_script
from ppo_utils import read_metrics

BAD_REWARDS = '''
def one_too_few(prompts, responses, **kwargs):
    return [0.0] * (len(responses) - 1)

def nan_at_3(prompts, responses, **kwargs):
    return [float("nan") if i == 3 else 0.0 for i in range(len(responses))]
'''


def test_end_to_end_outputs(tiny_config, tmp_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The film was\nThis movie is\nThe plot felt\n")
    config = tiny_config(steps=3, eval_file=str(held_out))
    result = run_script("--config", config, "--learning_rate", "1e-4")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run"

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "ppo/loss/policy",
                "ppo/loss/value", "ppo/policy/clipfrac", "time/generate", "time/score", "time/ppo_step"]:
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["objective/kl_coef"] == pytest.approx(0.2)  # init_kl_coef, then adapted
    assert rows[2]["objective/kl_coef"] != rows[0]["objective/kl_coef"]
    assert all(4 <= r["tokens/responses_len_mean"] <= 16 for r in rows)

    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["learning_rate"] == 1e-4 and saved["steps"] == 3 and saved["reward_fn"] == "sentiment_classifier"

    # the tuned policy reloads as a plain causal LM and with its value head (weights identical to training's)
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    lm = AutoModelForCausalLM.from_pretrained(out)
    with_head = AutoModelForCausalLMWithValueHead.from_pretrained(str(out))
    checkpoint_head = AutoModelForCausalLMWithValueHead.from_pretrained(str(out / "checkpoints" / "step-000003"))
    assert torch.equal(with_head.v_head.summary.weight, checkpoint_head.v_head.summary.weight)
    tokenizer = AutoTokenizer.from_pretrained(out)
    generated = lm.generate(**tokenizer("The film", return_tensors="pt"), max_new_tokens=5, do_sample=False,
                            pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] > 2

    # evaluation on the held-out prompts: before/after rewards, KL, a sample table; and the training curves
    report = json.loads((out / "eval.json").read_text())
    assert report["prompts"] == ["The film was", "This movie is", "The plot felt"]
    for name in ("before", "after"):
        assert len(report[name]["responses"]) == len(report[name]["rewards"]) == 3
        assert report[name]["mean"] == pytest.approx(sum(report[name]["rewards"]) / 3)
    assert report["kl"] == pytest.approx(report["kl"]) and abs(report["kl"]) < 50
    assert "| The film was |" in (out / "eval.md").read_text()
    assert "held-out reward: mean" in result.stderr
    png = out / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    from plot import plot_run

    assert plot_run(out) == png and png.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--learnin_rate", "1e-5"], "error: unknown setting 'learnin_rate': did you mean 'learning_rate'?"),
    (["--reward_fn", "{bad}:one_too_few"], "error: reward function 'one_too_few' returned 15 values for 16 responses"),
    (["--reward_fn", "{bad}:nan_at_3"], "error: reward function 'nan_at_3' returned nan at index 3"),
])
def test_user_errors_exit_2_with_one_line(tiny_config, tmp_path, argv, message):
    bad = tmp_path / "bad_rewards.py"
    bad.write_text(BAD_REWARDS)
    result = run_script("--config", tiny_config(), *[a.format(bad=bad) for a in argv])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_learns_keyword_reward(tiny_config, tmp_path, seed):
    """The template keyword reward, on a policy that already writes review-like text: PPO raises it."""
    config = tiny_config(reward_fn="keyword", reward_kwargs={"keywords": ["great"]}, batch_size=32,
                         mini_batch_size=8, steps=20, learning_rate=1e-3, save_every=100, seed=seed)
    result = run_script("--config", config)
    assert result.returncode == 0, result.stderr
    rewards = [r["env/reward_mean"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    print(f"seed {seed}: mean keyword reward, first 4 steps {first:.3f} -> last 4 steps {last:.3f}")
    assert last > first + 0.4
