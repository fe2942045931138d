"""The held-out report: the training reward next to judges, and reward hacking made visible."""

import json

from ppo_lm.evaluation import write_eval_report


def report(reward_after, judge_after):
    side = lambda reward, judge: {"responses": ["a", "b"],  # noqa: E731
                                  "sentiment_classifier": {"scores": [reward] * 2, "mean": reward, "median": reward},
                                  "vader": {"scores": [judge] * 2, "mean": judge, "median": judge}}
    return {"prompts": ["p", "q"], "scorers": ["sentiment_classifier", "vader"], "response_tokens": [4, 16],
            "kl": 3.0, "before": side(0.0, 0.1), "after": side(reward_after, judge_after)}


def test_judge_that_rises_with_the_reward(tmp_path):
    summary = write_eval_report(report(1.2, 0.4), tmp_path)
    assert summary == ("held-out sentiment_classifier: mean +0.000 -> +1.200, median +0.000 -> +1.200; judge vader: "
                       "+0.100 -> +0.400; KL(policy || reference) 3.00 nats on 2 prompts, responses of 4-16 tokens "
                       "as in training")
    assert "| vader (judge) | +0.100 | +0.400 | +0.300 |" in (tmp_path / "eval.md").read_text()
    assert json.loads((tmp_path / "eval.json").read_text())["reward_hacking_suspected"] is False


def test_reward_up_and_judge_flat_is_flagged(tmp_path):
    summary = write_eval_report(report(1.2, 0.05), tmp_path)
    assert summary.splitlines()[1].startswith("warning: the training reward rose (+1.200) but the judge(s) ['vader'] "
                                              "did not")
    assert "reward hacking" in (tmp_path / "eval.md").read_text()
    assert json.loads((tmp_path / "eval.json").read_text())["reward_hacking_suspected"] is True
