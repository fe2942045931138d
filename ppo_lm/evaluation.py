"""Evaluation: the reference and the tuned policy on held-out prompts, same sampling settings, lengths and seed.

The training reward is reported next to judges: scorers the policy never trained on (`eval_reward_fns`). A training
reward that rises while a judge does not is the signature of reward hacking, and the report says so.
"""

import json
from contextlib import nullcontext
from pathlib import Path
from statistics import stdev

import torch

from ppo_lm import zero
from ppo_lm.prompts import first_prompts, penalise_unended, with_columns
from ppo_lm.reward_contract import compute_rewards


def evaluate(trainer, tokenizer, prompts: dict, scorers: dict, reward_kwargs: dict, generation_kwargs: dict,
             response_lengths: tuple[int, int], batch_size: int, seed: int, before: dict | None = None,
             end_responses=None, missing_eos_penalty: float | None = None) -> dict:
    """Scores before (reference) and after (tuned policy), and KL(policy || reference) on the policy's samples.

    `prompts`: {"query": the prompts as the reward sees them, "input_ids": their tokens, and any dataset columns,
    which reach the scorers as keyword arguments}. `scorers` maps a name to a reward function; the first is the
    training reward. Each response is cut to a length drawn from `response_lengths` (inclusive), the same lengths
    before and after, so the KL here is the estimator and the length distribution of the training KL
    (`objective/kl`); with `end_responses` (whole prompts) each ends as in training instead, and the training reward
    adds `missing_eos_penalty` where an answer reached the limit without ending, as the training score does. A
    training reward of several functions (reward_contract.WeightedRewards) is reported with each function's scores
    too, computed once. `before`, a report's "before" part from an earlier call on the same prompts and seed, is
    reused (the reference is frozen)."""
    # The bare models: one process evaluates, and a DDP forward would wait for the others. Under ZeRO-3 every process
    # evaluates in step through the engines (TRL gathers their weights to generate). With LoRA the reference is the
    # policy with its adapters disabled (TRL's optional_peft_ctx).
    unwrap = (lambda model: model) if zero.stage(trainer.accelerator) == 3 else trainer.accelerator.unwrap_model
    policy = unwrap(trainer.model)
    reference = policy if trainer.is_peft_model else unwrap(trainer.ref_model)
    as_reference = trainer.optional_peft_ctx
    device = trainer.accelerator.device
    queries = [torch.tensor(ids, device=device) for ids in prompts["input_ids"]]
    shown, kwargs = prompts["query"], with_columns(reward_kwargs, prompts)
    low, high = response_lengths
    lengths = torch.randint(low, high + 1, (len(shown),), generator=torch.Generator().manual_seed(seed)).tolist()
    reward, *judges = scorers
    components = getattr(scorers[reward], "weights", {}) if len(getattr(scorers[reward], "fns", ())) > 1 else {}
    report, samples = {"prompts": shown, "scorers": [reward, *components, *judges], "response_tokens": [low, high],
                       "ends_at_eos": end_responses is not None, "components": components,
                       "missing_eos_penalty": missing_eos_penalty}, {}
    if before is not None:
        report["before"] = before
    for name, model, context in [("before", reference, as_reference), ("after", policy, nullcontext)]:
        if name in report:
            continue
        torch.manual_seed(seed)
        with context():
            generated = trainer._generate_batched(model, queries, batch_size=batch_size, return_prompt=False,
                                                  **generation_kwargs)
        if end_responses:
            samples[name], ended = end_responses(generated)
        else:
            samples[name], ended = [r[:n] for r, n in zip(generated, lengths)], None
        texts = tokenizer.batch_decode(samples[name], skip_special_tokens=True)
        report[name] = {"responses": texts} | ({"ended": ended} if ended else {})
        for scorer, fn in scorers.items():
            parts = fn.parts(shown, texts, kwargs) if scorer == reward and components else {}
            scored = {scorer: fn.total(parts) if parts else compute_rewards(fn, shown, texts, kwargs)} | parts
            if scorer == reward and ended:
                scored[scorer] = penalise_unended(scored[scorer], ended, missing_eos_penalty)
            for key, values in scored.items():
                values = torch.tensor(values)
                report[name][key] = {"scores": values.tolist(), "mean": values.mean().item(),
                                     "median": values.median().item()}
    # TRL's KL estimator, as in objective/kl, on the tuned policy's samples: sum of log pi - log pi_ref per response
    responses = samples["after"]
    inputs = trainer.prepare_model_inputs(queries, responses)
    with torch.no_grad():
        logprobs, _, _, masks = trainer.batched_forward_pass(policy, queries, responses, inputs)
        with as_reference():
            ref_logprobs, *_ = trainer.batched_forward_pass(reference, queries, responses, inputs)
    report["kl"] = ((logprobs - ref_logprobs) * masks).sum(1).mean().item()
    return report


def change_se(before: list[float], after: list[float]) -> float:
    """Standard error of the mean change, paired by prompt (the same prompts, seed and lengths before and after):
    how far the reported change could move with another sample of prompts."""
    diffs = [a - b for a, b in zip(after, before)]
    return stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")


def write_eval_report(report: dict, output_dir, n_samples: int = 10) -> str:
    """eval.json (all samples) and eval.md (summary, per-scorer table, samples); returns the summary."""
    before, after = report["before"], report["after"]
    reward, *others = report["scorers"]
    components = report.get("components", {})
    judges = [s for s in others if s not in components]
    low, high = report["response_tokens"]
    delta = {s: after[s]["mean"] - before[s]["mean"] for s in report["scorers"]}
    report["change_se"] = se = {s: change_se(before[s]["scores"], after[s]["scores"]) for s in report["scorers"]}
    summary = (f"held-out {reward}: mean {before[reward]['mean']:+.3f} -> {after[reward]['mean']:+.3f} "
               f"({delta[reward]:+.3f} ± {se[reward]:.3f} s.e.), "
               f"median {before[reward]['median']:+.3f} -> {after[reward]['median']:+.3f}"
               + "".join(f"; judge {j}: {before[j]['mean']:+.3f} -> {after[j]['mean']:+.3f}" for j in judges)
               + f"; KL(policy || reference) {report['kl']:.2f} nats on {len(report['prompts'])} prompts, "
               + (f"responses ending at EOS or at {high} tokens as in training" if report.get("ends_at_eos") else
                  f"responses of {low}-{high} tokens as in training"))
    if "ended" in before and "ended" in after:
        ended = lambda side: 100 * sum(side["ended"]) / len(side["ended"])  # noqa: E731
        summary += f" (ended: {ended(before):.1f} % -> {ended(after):.1f} %)"
    if report.get("missing_eos_penalty") is not None:
        summary += (f"; {reward} includes missing_eos_penalty {report['missing_eos_penalty']:+g} where an answer did "
                    "not end")
    hacked = [j for j in judges if delta[reward] > 0 and delta[j] <= 0]
    if hacked:
        summary += (f"\nwarning: the training reward rose ({delta[reward]:+.3f}) but the judge(s) {hacked} did not: "
                    "the policy may be exploiting the reward function (reward hacking); read the samples")
    report["reward_hacking_suspected"] = bool(hacked)
    role = {reward: " (training reward)"} | {c: f" (reward function, weight {w:g})" for c, w in components.items()}
    table = "".join(f"| {s}{role.get(s, ' (judge)')} | {before[s]['mean']:+.3f} | "
                    f"{after[s]['mean']:+.3f} | {delta[s]:+.3f} | {se[s]:.3f} | {before[s]['median']:+.3f} | "
                    f"{after[s]['median']:+.3f} |\n" for s in report["scorers"])
    rows = [f"| {p} | {b} | {before_r:+.3f} | {a} | {after_r:+.3f} |".replace("\n", " ")
            for p, b, before_r, a, after_r in list(zip(report["prompts"], before["responses"],
                                                        before[reward]["scores"], after["responses"],
                                                        after[reward]["scores"]))[:n_samples]]
    Path(output_dir, "eval.md").write_text(
        f"# Evaluation on held-out prompts\n\n{summary}\n\n"
        "| scorer | mean before | mean after | change | s.e. of change | median before | median after |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{table}\n| prompt | before | {reward} | after | {reward} |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    Path(output_dir, "eval.json").write_text(json.dumps(report, indent=1))
    return summary


def evaluates_here(accelerator) -> bool:
    """The main process evaluates; under ZeRO-3 every process does, in step, since each holds a shard of the weights
    (evaluate() then goes through the engines, which TRL gathers to generate)."""
    return accelerator.is_main_process or zero.stage(accelerator) == 3


def held_out_row(report: dict, seconds: float) -> dict:
    """A held-out evaluation during training, as metrics columns: the training reward's mean (eval/reward) and the
    reference's on the same prompts (eval/reward_reference, the same in every row), each judge's (eval/JUDGE), the
    KL, and the wall time since the run started."""
    reward, *others = report["scorers"]
    components = report.get("components", {})
    return {"eval/reward": report["after"][reward]["mean"], "eval/reward_reference": report["before"][reward]["mean"],
            **{(f"eval/reward/{s}" if s in components else f"eval/{s}"): report["after"][s]["mean"] for s in others},
            "eval/kl": report["kl"],
            "eval/seconds": seconds}


def best_evaluation(rows: list[dict], target: float) -> dict | None:
    """The metrics row with the best held-out reward among the evaluations whose held-out KL is within target."""
    within = [r for r in rows if "eval/reward" in r and r["eval/kl"] <= target]
    return max(within, key=lambda r: r["eval/reward"]) if within else None


class DuringTraining:
    """eval_steps: the held-out evaluation every N steps, on the first eval_samples prompts of eval_file, with the
    sampling, seed and KL estimator of the end-of-run report (the reference's side is computed once). It runs on
    the main process (on every process under ZeRO-3) with the RNG forked, so training samples exactly as without
    it. `settings` are evaluate()'s, for the end-of-run report too; `best` is the row with the best held-out reward
    within the KL target (also over a resumed run's rows)."""

    def __init__(self, every: int, prompts: dict | None, settings: dict, target: float, earlier_rows: list[dict],
                 samples: int):
        self.every, self.settings, self.target = every, settings, target
        self.prompts = first_prompts(prompts, samples) if prompts else None
        self.before = None
        self.best = best_evaluation(earlier_rows, target)

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def run(self, trainer, seconds: float) -> dict:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            report = evaluate(trainer, prompts=self.prompts, before=self.before, **self.settings)
        self.before = report["before"]
        return held_out_row(report, seconds)

    def is_new_best(self, row: dict) -> bool:
        best = best_evaluation([r for r in (self.best, row) if r], self.target)  # a tie keeps the earlier one
        new, self.best = best is row, best
        return new

    @property
    def keep(self) -> set[int]:
        """Checkpoints that save_total_limit never prunes: the best step's."""
        return {self.best["step"]} if self.best else set()
