"""The held-out report: the training reward next to judges, and reward hacking made visible."""

import json
from pathlib import Path

import pytest

from ppo_lm.evaluation import change_se, write_eval_report


def report(reward_after, judge_after):
    side = lambda reward, judge: {"responses": ["a", "b"],  # noqa: E731
                                  "sentiment_classifier": {"scores": [reward] * 2, "mean": reward, "median": reward},
                                  "vader": {"scores": [judge] * 2, "mean": judge, "median": judge}}
    return {"prompts": ["p", "q"], "scorers": ["sentiment_classifier", "vader"], "response_tokens": [4, 16],
            "kl": 3.0, "before": side(0.0, 0.1), "after": side(reward_after, judge_after)}


def test_judge_that_rises_with_the_reward(tmp_path):
    summary = write_eval_report(report(1.2, 0.4), tmp_path)
    assert summary == ("held-out sentiment_classifier: mean +0.000 -> +1.200 (+1.200 ± 0.000 s.e.), median +0.000 -> "
                       "+1.200; judge vader: +0.100 -> +0.400; KL(policy || reference) 3.00 nats on 2 prompts, "
                       "responses of 4-16 tokens as in training")
    assert "| vader (judge) | +0.100 | +0.400 | +0.300 | 0.000 |" in (tmp_path / "eval.md").read_text()
    assert json.loads((tmp_path / "eval.json").read_text())["reward_hacking_suspected"] is False


def test_the_change_has_its_paired_standard_error(tmp_path):
    # per-prompt changes 1, 2, 3, 4: standard deviation sqrt(5/3), over sqrt(4) prompts
    assert change_se([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0]) == pytest.approx((5 / 3) ** 0.5 / 2)
    assert change_se([0.0, 1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0  # every prompt moved alike: no doubt about the mean
    changed = report(1.2, 0.4)
    changed["after"]["sentiment_classifier"]["scores"] = [1.0, 1.4]  # changes 1.0 and 1.4: s.e. 0.2
    summary = write_eval_report(changed, tmp_path)
    assert "(+1.200 ± 0.200 s.e.)" in summary
    assert json.loads((tmp_path / "eval.json").read_text())["change_se"]["sentiment_classifier"] == \
        pytest.approx(0.2)


def test_reward_up_and_judge_flat_is_flagged(tmp_path):
    summary = write_eval_report(report(1.2, 0.05), tmp_path)
    assert summary.splitlines()[1].startswith("warning: the training reward rose (+1.200) but the judge(s) ['vader'] "
                                              "did not")
    assert "reward hacking" in (tmp_path / "eval.md").read_text()
    assert json.loads((tmp_path / "eval.json").read_text())["reward_hacking_suspected"] is True


SMOLLM2 = Path(__file__).resolve().parents[1] / "models/smollm2-135m"


@pytest.mark.skipif(not (SMOLLM2 / "model.safetensors").is_file(),
                    reason="needs models/smollm2-135m (make train-chat builds it)")
def test_answers_that_game_the_instruction_check_are_flagged(tmp_path):
    """make train-chat's reward and judge: before, sentences about the topic that miss the word; after, the topic and
    the word in a jumble. The check rises, answer_logprob (under the starting model) falls: flagged."""
    import reward

    columns = {"kind": ["use_word"] * 2, "word": ["calm", "bright"], "max_words": [0, 0],
               "topic": ["the ocean", "a library"]}
    prompts = ["Write one sentence about the ocean. Use the word calm.",
               "Write one sentence about a library. Use the word bright."]
    before = ["The ocean is wide and deep.", "A library is full of books."]
    after = ["ocean the calm was so under ocean sun", "bright library the of full quiet readers and"]

    def side(responses):
        scores = {"instruction_followed": reward.instruction_followed(prompts, responses, **columns),
                  "answer_logprob": reward.answer_logprob(prompts, responses, lm=str(SMOLLM2))}
        return {"responses": responses, **{name: {"scores": v, "mean": sum(v) / 2, "median": sum(v) / 2}
                                           for name, v in scores.items()}}

    report = {"prompts": prompts, "scorers": ["instruction_followed", "answer_logprob"], "response_tokens": [1, 32],
              "ends_at_eos": True, "kl": 1.0, "before": side(before), "after": side(after)}
    assert report["before"]["instruction_followed"]["mean"] == 0.0 and report["after"]["instruction_followed"]["mean"] \
        == 1.0 and report["after"]["answer_logprob"]["mean"] < report["before"]["answer_logprob"]["mean"] - 1.0
    summary = write_eval_report(report, tmp_path)
    assert "warning: the training reward rose (+1.000) but the judge(s) ['answer_logprob'] did not" in summary


def kl_trainer(tiny, perturb: bool):
    """PPOTrainer over the tiny policy and a reference loaded from the same weights; with `perturb` the policy's first
    MLP gets noise, so the two differ."""
    import torch
    from transformers import AutoTokenizer
    from trl import PPOConfig, PPOTrainer

    from ppo_lm.models import load_model
    from train_ppo import CheckedModelConfig

    model_args = CheckedModelConfig(tiny["policy"])
    policy, reference = (load_model(tiny["policy"], what, model_args) for what in ("policy", "reference"))
    if perturb:
        torch.manual_seed(1)
        weight = policy.pretrained_model.transformer.h[0].mlp.c_fc.weight
        with torch.no_grad():
            weight.add_(0.5 * torch.randn_like(weight))
    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"  # as train_ppo.py loads it
    return PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=4), policy, reference, tokenizer), tokenizer


PROMPTS = ["The film", "This movie was great to me.", "The plot", "The acting felt slow at times and", "It was"]


def run_evaluate(trainer, tokenizer, seed=0):
    from ppo_lm.evaluation import evaluate
    from ppo_lm.validation import HONEST_SAMPLING

    words = lambda prompts, responses: [float(len(r.split())) for r in responses]  # noqa: E731
    generation = HONEST_SAMPLING | {"max_new_tokens": 6, "pad_token_id": tokenizer.pad_token_id}
    prompts = {"query": PROMPTS, "input_ids": tokenizer(PROMPTS)["input_ids"]}
    return evaluate(trainer, tokenizer, prompts, {"words": words}, {}, generation, (2, 6), 4, seed)


def test_eval_kl_is_zero_when_the_policy_is_the_reference(tiny):
    trainer, tokenizer = kl_trainer(tiny, perturb=False)
    assert run_evaluate(trainer, tokenizer)["kl"] == pytest.approx(0.0, abs=1e-6)


def test_eval_kl_equals_a_hand_computation(tiny):
    """sum over response tokens of log pi(token) - log pi_ref(token), each sequence scored alone (no padding),
    averaged over the prompts: the same number evaluate() reports from TRL's batched forward pass."""
    import torch

    trainer, tokenizer = kl_trainer(tiny, perturb=True)
    generated = []
    generate = trainer._generate_batched

    def recording(*args, **kwargs):
        generated.append(generate(*args, **kwargs))
        return generated[-1]

    trainer._generate_batched = recording
    report = run_evaluate(trainer, tokenizer, seed=3)
    lengths = torch.randint(2, 7, (len(PROMPTS),), generator=torch.Generator().manual_seed(3)).tolist()
    responses = [r[:n] for r, n in zip(generated[1], lengths)]  # the tuned policy's samples ("after"), cut
    queries = [torch.tensor(ids, device=trainer.accelerator.device) for ids in tokenizer(PROMPTS)["input_ids"]]

    def logprobs(model, query, response):
        logits = model.pretrained_model(torch.cat([query, response])[None]).logits[0]
        return torch.log_softmax(logits.float(), -1)[len(query) - 1 : -1].gather(-1, response[:, None]).sum()

    with torch.no_grad():
        hand = torch.stack([logprobs(trainer.model, q, r) - logprobs(trainer.ref_model, q, r)
                            for q, r in zip(queries, responses)]).mean().item()
    assert abs(hand) > 0.01  # the perturbation made the policy differ
    assert report["kl"] == pytest.approx(hand, rel=1e-4, abs=1e-5)
