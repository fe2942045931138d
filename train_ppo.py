#!/usr/bin/env python
"""PPO fine-tuning of a causal language model against a reward function, on TRL 0.11.4's PPOTrainer.

    python train_ppo.py --config configs/gpt2_imdb.yaml [--any_setting value ...]
    accelerate launch train_ppo.py --config configs/gpt2_imdb.yaml

One PPO step per batch of prompts: (1) the policy generates responses, (2) the reward function scores them,
(3) PPOTrainer.step turns scores into per-token rewards  r_t = -beta * KL_t (+ score on the last token),
computes GAE advantages and runs ppo_epochs of clipped policy/value updates, then moves beta toward the KL
target (adaptive KL control), (4) we log. Settings: ScriptArguments below plus every field of trl.PPOConfig and
trl.ModelConfig. The machinery (checks, checkpoints, outputs) lives in ppo_lm/, one concern a module.
"""

if __name__ == "__main__":  # before the imports: importing this file (tests, benchmarks) changes nothing
    from ppo_lm.errors import quiet_interrupts
    from ppo_lm.launch import prepare_process

    quiet_interrupts()  # Ctrl-C while importing or loading models: one line and exit 130, not a traceback
    prepare_process()  # CUDA_VISIBLE_DEVICES / DS_ACCELERATOR for CPU runs, TRL's PPOv2 deprecation notice

import errno
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import transformers
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import disable_progress_bars
from tqdm import tqdm
from trl import ModelConfig, PPOConfig, PPOTrainer, set_seed
from trl.commands.cli_utils import TrlParser
from trl.core import LengthSampler

import reward
from ppo_lm import zero
from ppo_lm.checkpoints import find_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint, save_policy
from ppo_lm.compat import trl_package_flags
from ppo_lm.data import batch_indices, read_eval_prompts
from ppo_lm.errors import RunError, exits_cleanly, first_line, write_failed, writing
from ppo_lm.evaluation import DuringTraining, evaluate, evaluates_here, write_eval_report
from ppo_lm.hub import push_to_hub
from ppo_lm.kl_control import FlooredKLController
from ppo_lm.metrics import log_step, print_table, quiet_tracker_threads, read_metrics, step_row, truncate_metrics
from ppo_lm.model_card import write_model_card
from ppo_lm.models import load_policy_and_reference, load_tokenizer
from ppo_lm.output_dir import NewRun, holds_earlier_run, lock_output_dir, recover_interrupted_start
from ppo_lm.plots import plot_run
from ppo_lm.prompts import (check_columns, end_responses, held_out_prompts, penalise_unended, text_prefixes,
                            whole_prompts, with_columns)
from ppo_lm.processes import (agreed_stop, fail_together, finish, from_main_process,
                              lost_processes_and_memory_are_one_line)
from ppo_lm.reward_contract import ScoreMoments, WeightedRewards, compute_rewards, load_reward_fn
from ppo_lm.run_config import check_resume_settings, run_settings
from ppo_lm.signals import StopSignals, resume_command, stopped
from ppo_lm.validation import HONEST_SAMPLING, UNUSED_FIELDS, JsonDict, check_settings, check_values, parse_config


@dataclass
class ScriptArguments:
    # models: the policy and LoRA settings are trl.ModelConfig's (model_name_or_path, torch_dtype, use_peft, lora_*)
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Frozen reference for the KL penalty (default: model_name_or_path)."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Dropout off in policy and reference, so PPO ratios and KL are exact."})
    save_merged: bool = field(
        default=False, metadata={"help": "With use_peft, also save OUTPUT_DIR/merged: base + adapters in one model."})
    # data: prompts are each row's prompt_column whole, or else the first prompt_{min,max}_tokens tokens of each text
    dataset_name: str = field(
        default="stanfordnlp/imdb", metadata={"help": "Hub dataset id, or local .json/.jsonl/.csv/.txt file(s)."})
    dataset_config: Optional[str] = field(
        default=None, metadata={"help": "The hub dataset's configuration, where it has several (openai/gsm8k: main)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the dataset to draw prompts from."})
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    min_text_length: int = field(default=200, metadata={"help": "Drop texts shorter than this many characters."})
    prompt_min_tokens: int = field(default=2, metadata={"help": "Shortest prompt, in tokens (inclusive)."})
    prompt_max_tokens: int = field(
        default=8, metadata={"help": "Longest prompt, in tokens (inclusive); with prompt_column, longer ones are "
                             "dropped (a count is printed)."})
    prompt_column: Optional[str] = field(
        default=None, metadata={"help": "Use each row's prompt whole: text, or a list of {role, content} messages "
                                "(rendered with the tokenizer's chat template). Responses then end at EOS. Every other "
                                "column reaches the reward functions as a keyword argument."})
    chat_template: bool = field(
        default=False, metadata={"help": "With prompt_column: wrap a plain-text prompt as one user turn of the chat "
                                 "template."})
    system_prompt: Optional[str] = field(
        default=None, metadata={"help": "With a chat prompt: a system turn before the user's."})
    # generation: the defaults sample from the policy's own distribution, which keeps the KL estimate honest
    response_min_tokens: int = field(default=4, metadata={"help": "Shortest response, in tokens (inclusive)."})
    response_max_tokens: int = field(default=16, metadata={"help": "Longest response, in tokens (inclusive)."})
    stop_strings: list[str] = field(
        default_factory=list, metadata={"help": "With prompt_column: a response also ends after any of these."})
    missing_eos_penalty: Optional[float] = field(
        default=None, metadata={"help": "With prompt_column: added to the score of a response that reached "
                                "response_max_tokens without ending (EOS or a stop string); e.g. -1.0."})
    one_length_per_batch: bool = field(
        default=False, metadata={"help": "One sampled response length per generate() call (the batch, unless "
                                 "generation_batch_size is smaller), as TRL's examples: generate() stops there, so "
                                 "fewer seconds per episode (BENCHMARKS.md). Default: each response its own length, "
                                 "the batch generated to the longest."})
    generation_batch_size: int = field(default=128, metadata={"help": "Prompts per generate() call."})
    do_sample: bool = field(default=True, metadata={"help": "Sample responses (greedy decoding breaks PPO)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 = off."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling; 1.0 = off."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    min_length: int = field(default=-1, metadata={"help": "generate() min_length; -1 = no minimum."})
    # reward
    reward_fn: list[str] = field(
        default_factory=lambda: ["sentiment_classifier"],
        metadata={"help": "Function(s) in reward.py, or path/to/file.py:function; several: the score is their "
                  "weighted sum (reward_weights), each logged as env/reward/NAME."})
    reward_weights: list[float] = field(
        default_factory=list, metadata={"help": "One weight per reward_fn (default: all 1.0); 0 = logged only."})
    reward_kwargs: JsonDict = field(
        default_factory=JsonDict,
        metadata={"help": "Keyword arguments for the reward function (YAML mapping or JSON)."})
    # outputs
    output_dir: str = field(default="runs/ppo", metadata={"help": "Where the model, metrics and checkpoints go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run in output_dir."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (and always at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints to keep (the newest)."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' (or 'true') or a checkpoint-N directory to continue from."})
    hub_model_id: Optional[str] = field(
        default=None, metadata={"help": "Push OUTPUT_DIR to this hub repo at the end (checked at start-up)."})
    sample_every: int = field(default=20, metadata={"help": "Print a table of samples every N steps; 0 = never."})
    eval_file: Optional[str] = field(
        default=None,
        metadata={"help": "Held-out prompts, one per line: compare reference and tuned policy at the end."})
    eval_steps: int = field(
        default=0, metadata={"help": "Also evaluate on held-out prompts every N steps (eval/... columns of "
                             "metrics.jsonl; the best step's checkpoint is kept); 0 = only at the end."})
    eval_samples: int = field(
        default=64, metadata={"help": "Held-out prompts (the first N of eval_file) for the evaluations every "
                              "eval_steps."})
    eval_reward_fns: list[str] = field(
        default_factory=list, metadata={"help": "Judges for the evaluation: reward functions the policy never trained "
                                        "on, called with reward_kwargs (e.g. vader sentiment_positive)."})

    # KL control (the rest is PPOConfig's: adap_kl_ctrl, init_kl_coef, target, horizon)
    min_kl_coef: Optional[float] = field(
        default=None, metadata={"help": "With adap_kl_ctrl, beta never goes below this (at most init_kl_coef); "
                                "None = TRL's controller unchanged."})

    def __post_init__(self):
        check_values(self)  # types and validation.RANGES, before anything is loaded


@dataclass
class CheckedModelConfig(ModelConfig):
    """trl.ModelConfig (the policy, its dtype, LoRA via trl.get_peft_config), its values checked like the others."""

    def __post_init__(self):
        check_values(self)


@dataclass
class CheckedPPOConfig(PPOConfig):
    """trl.PPOConfig, its values checked (validation.RANGES, unused fields) before TRL's own __post_init__ uses them."""

    def __post_init__(self):
        check_values(self)
        super().__post_init__()

    def to_dict(self):  # what PPOTrainer hands the tracker as the run's config: no field this script ignores
        shown = {"model_name", "query_dataset", "reward_model"}  # filled in from the run's own settings
        return {k: v for k, v in super().to_dict().items() if k not in set(UNUSED_FIELDS) - shown}


DERIVED_PPO_FIELDS = {"world_size", "backward_batch_size", "global_backward_batch_size", "global_batch_size",
                      "is_encoder_decoder", "is_peft_model"}


def resume_point(args: ScriptArguments, settings: dict) -> Optional[Path]:
    """The checkpoint to resume from, or None for a new run; an earlier run in output_dir is never replaced unasked."""
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        check_resume_settings(settings, checkpoint)
        return checkpoint
    if holds_earlier_run(args.output_dir) and not args.overwrite_output_dir:
        raise RunError(f"output_dir '{args.output_dir}' holds an earlier run: resume it with --resume_from_checkpoint "
                       "latest, replace it with --overwrite_output_dir, or choose another --output_dir")
    return None


def make_trainer(config: PPOConfig, policy, reference, tokenizer, args: ScriptArguments) -> PPOTrainer:
    """PPOTrainer, which builds accelerate's Accelerator and starts log_with's tracker: a value accelerate refuses
    there ends in one line. Beta gets its floor when min_kl_coef is set; the score moments of use_score_scaling are
    kept as the tensors TRL's step expects."""
    if config.log_with == "tensorboard":  # accelerate needs a directory for it: OUTPUT_DIR/logs unless given
        config.project_kwargs = {"logging_dir": str(Path(args.output_dir, "logs")), **config.project_kwargs}
        quiet_tracker_threads()
    if zero.in_use():
        zero.patch_deepspeed()
        config.accelerator_kwargs = {**config.accelerator_kwargs,
                                     "deepspeed_plugin": zero.plugin(config.mini_batch_size)}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No dataset is provided")
            trainer = PPOTrainer(config, policy, reference, tokenizer)
    except (AssertionError, ValueError, TypeError, ImportError, OSError) as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # the tracker's first files
            raise write_failed("the tracker's logs", config.project_kwargs.get("logging_dir", args.output_dir), e,
                               args.output_dir, code=2) from None
        raise RunError(f"accelerate refused the run's settings while PPOTrainer set up ({type(e).__name__}: "
                       f"{first_line(e)}); check accelerator_kwargs, project_kwargs, tracker_kwargs and log_with") from None
    if args.min_kl_coef is not None:  # check_settings: only with adap_kl_ctrl
        trainer.kl_ctl = FlooredKLController(config.init_kl_coef, config.target, config.horizon, args.min_kl_coef)
    trainer.running = ScoreMoments(trainer.accelerator)
    return trainer


def generate(trainer: PPOTrainer, tokenizer, queries, args: ScriptArguments, response_length: LengthSampler,
             generation_kwargs: dict, step: int) -> tuple[list, list[bool]]:
    """Responses to the queries (generate() left-pads each call's batch), and whether each ended before the limit.
    Text prefixes: each is cut to its own sampled length: the first n tokens of a longer sample are exactly a sample
    of n tokens (one_length_per_batch: TRL's length_sampler, one length per generate() call, as its examples).
    Whole prompts: each ends at its first EOS (kept), after a stop string, or at response_max_tokens."""
    try:
        responses = trainer.generate(queries, batch_size=args.generation_batch_size, return_prompt=False,
                                     length_sampler=response_length if args.one_length_per_batch else None,
                                     **generation_kwargs)
    except RuntimeError as e:  # torch.multinomial on inf/NaN probabilities: the weights blew up
        if "probability tensor" not in str(e):
            raise
        raise diverged(args.output_dir, step, "sampling found inf/NaN probabilities") from None
    if args.prompt_column:
        return end_responses(responses, tokenizer, args.stop_strings, args.response_max_tokens)
    if not args.one_length_per_batch:
        responses = [r[: response_length()] for r in responses]
    return responses, [True] * len(responses)


def score(reward_fn: WeightedRewards, batch: dict, response_texts: list[str], ended: list[bool],
          args: ScriptArguments) -> tuple[list[float], dict[str, list[float]]]:
    """The reward functions on the batch's prompts and responses, with reward_kwargs and the batch's dataset columns:
    their weighted sum, missing_eos_penalty added where a response reached the limit without ending; and each
    function's own scores."""
    parts = reward_fn.parts(batch["query"], response_texts, with_columns(args.reward_kwargs, batch))
    return penalise_unended(reward_fn.total(parts), ended, args.missing_eos_penalty), parts


def ppo_step(trainer: PPOTrainer, queries, responses, scores: list[float]) -> tuple[dict, int]:
    """trainer.step, and how many minibatches TRL skipped (its ratio_threshold warning); other warnings pass on, each
    once per run (under ZeRO-3 the update's collectives would repeat torch's deprecation notices every step)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = trainer.step(queries, responses, [torch.tensor(s) for s in scores])
    skipped = sum("exceeds threshold" in str(w.message) for w in caught)
    for w in caught:
        seen = (str(w.message), w.category, w.filename, w.lineno)
        if "exceeds threshold" not in str(w.message) and seen not in PASSED_ON:
            PASSED_ON.add(seen)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return stats, skipped


PASSED_ON: set[tuple] = set()  # the warnings ppo_step has passed on


def diverged(output_dir: str, step: int, what: str) -> RunError:
    last = list_checkpoints(output_dir)
    return RunError(f"step {step}: {what}; training diverged (lower learning_rate, or set score_clip / "
                    f"use_score_scaling); last good checkpoint: {last[-1] if last else 'none'}", code=1)


def check_finite(row: dict, trainable: list, output_dir: str) -> None:
    """A non-finite KL or loss, or weights, ends the run before the row is logged (the next generate() would sample
    from NaN); the last checkpoint is the last good state."""
    bad = [f"{k} is {row[k]}" for k in ("objective/kl", "ppo/loss/total", "ppo/loss/policy", "ppo/loss/value")
           if not math.isfinite(row.get(k, 0.0))]
    if not bad and not math.isfinite(torch.nn.utils.get_total_norm(trainable).item()):
        bad = ["the policy's weights are no longer finite"]
    if bad:
        raise diverged(output_dir, row["step"], bad[0])


def held_out_evaluation(args, config, tokenizer, reward_fn: WeightedRewards, judges: dict, generation_kwargs: dict,
                        eval_prompts, earlier_rows: list[dict]) -> DuringTraining:
    """The held-out measurement, every eval_steps on the first eval_samples prompts and at the end on all: the
    training sampling, lengths and seed, the training reward and the judges."""
    settings = {"tokenizer": tokenizer, "scorers": {reward_fn.__name__: reward_fn} | judges,
                "reward_kwargs": args.reward_kwargs,
                "generation_kwargs": generation_kwargs, "batch_size": args.generation_batch_size, "seed": config.seed,
                "response_lengths": (args.response_min_tokens, args.response_max_tokens),
                "end_responses": (lambda responses: end_responses(responses, tokenizer, args.stop_strings,
                                                                  args.response_max_tokens))
                if args.prompt_column else None, "missing_eos_penalty": args.missing_eos_penalty}
    return DuringTraining(args.eval_steps, eval_prompts, settings, config.target, earlier_rows, args.eval_samples)


def report_run(trainer, tokenizer, args, model_args, settings, eval_prompts, held_out: DuringTraining,
               main_process: bool):
    """End of run: reference vs tuned policy on held-out prompts (same sampling and seed), the training curves, the
    model card, the merged model and the hub push when asked for. Where evaluates_here; the main process writes (a
    failed write ends the run in one line: a resume from the last checkpoint writes it all again)."""
    output_dir = Path(args.output_dir)
    report = evaluate(trainer, prompts=eval_prompts, **held_out.settings) if eval_prompts else None
    if not main_process:
        return
    with writing("the end-of-run report", output_dir, output_dir):
        if report:
            print_table("held-out prompts: reference (before) vs tuned policy (after)",
                        ["prompt", "before", "reward", "after", "reward"], eval_prompts["query"],
                        report["before"]["responses"], report["before"][report["scorers"][0]]["scores"],
                        report["after"]["responses"], report["after"][report["scorers"][0]]["scores"], n=8)
            print(write_eval_report(report, output_dir), file=sys.stderr)
        print(f"training curves: {plot_run(output_dir)}", file=sys.stderr)
        eval_md = (output_dir / "eval.md").read_text() if report else None
        print(f"model card: {write_model_card(output_dir, settings, eval_md, held_out.best)}", file=sys.stderr)
        if model_args.use_peft and args.save_merged:  # last: merging folds the adapters into the base weights
            policy = trainer.accelerator.unwrap_model(trainer.model)
            policy.pretrained_model.merge_and_unload().save_pretrained(output_dir / "merged", safe_serialization=True)
            tokenizer.save_pretrained(output_dir / "merged")
            print(f"merged model (base + adapters): {output_dir / 'merged'}", file=sys.stderr)
    if args.hub_model_id:
        print(f"pushed to the hub: {push_to_hub(output_dir, args.hub_model_id)}", file=sys.stderr)


def main(argv: list[str]) -> None:
    trl_package_flags()  # trl 0.11.4 on transformers 5 (ppo_lm/compat.py)
    # ---- Settings: parsed and checked (types, ranges, files) before anything is loaded or written
    args, config, model_args = parse_config(TrlParser((ScriptArguments, CheckedPPOConfig, CheckedModelConfig)), argv)
    check_settings(args, config, model_args)
    if args.eval_file and not args.prompt_column:  # checked before anything is loaded (whole prompts: once the
        read_eval_prompts(args.eval_file)        # tokenizer is there to render them)
    settings = run_settings([model_args, args, config], DERIVED_PPO_FIELDS | set(UNUSED_FIELDS))
    # what trackers show as the run's model, data and reward (PPOConfig's own fields are TRL's example's)
    config.model_name, config.query_dataset, config.reward_model = \
        model_args.model_name_or_path, args.dataset_name, " + ".join(args.reward_fn)
    set_seed(config.seed)  # before any model is built: a fresh value head's initial weights come from this seed
    # `accelerate launch --cpu` (or ACCELERATE_USE_CPU set by hand); DeepSpeed on CPU processes needs gloo named
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **zero.process_group())
    disable_progress_bars()  # datasets' bars for filter/map; the PPO bar is the one to watch
    transformers.utils.logging.disable_progress_bar()  # transformers 5's bars for loading and saving weights
    metrics_path = Path(args.output_dir, "metrics.jsonl")

    # Everything that can fail on bad input runs inside `together` (a failure on any process ends them all), and
    # before output_dir is touched.
    with fail_together(state):
        if state.is_main_process:
            recover_interrupted_start(args.output_dir)
        checkpoint = resume_point(args, settings)
        reward_fn = WeightedRewards({spec: load_reward_fn(spec, "reward_fn", reward) for spec in args.reward_fn},
                                    args.reward_weights or [1.0] * len(args.reward_fn))
        judges = {spec: load_reward_fn(spec, "eval_reward_fns", reward) for spec in args.eval_reward_fns}

        # ---- Models: policy with value head (from the checkpoint when resuming), frozen reference, tokenizer
        tokenizer, context = load_tokenizer(model_args, args.prompt_max_tokens, args.response_max_tokens)
        eval_prompts = held_out_prompts(args, tokenizer, context)
        policy, reference = load_policy_and_reference(model_args, checkpoint, args.ref_model_name_or_path,
                                                      args.disable_dropout, verbose=state.is_main_process)

        # ---- Data: prompts, in an order that is a pure function of (seed, step) so a resume continues it
        dataset = whole_prompts(args, tokenizer) if args.prompt_column else text_prefixes(args, tokenizer, config.seed)
        check_columns(dataset, args.reward_kwargs)
        if len(dataset) < config.batch_size * state.num_processes:
            raise RunError(f"the dataset has {len(dataset)} prompts, fewer than one batch "
                           f"(batch_size {config.batch_size} x {state.num_processes} processes); lower batch_size")
        # The reward function and the judges, called once on two prompts (as their own responses): a wrong model
        # path or label fails here, and their models are loaded once for the run
        probe = dataset[:2]  # with its columns: a column a function needs that the data lacks fails here
        for fn in [*reward_fn.fns.values(), *judges.values()]:
            compute_rewards(fn, probe["query"], probe["query"], with_columns(args.reward_kwargs, probe))
        if state.is_main_process:  # one live run per output_dir; held until this process ends
            lock_output_dir(args.output_dir)

    # ---- Trainer. Until the first step is logged, a failure leaves output_dir as it was (an earlier run that
    # --overwrite_output_dir replaces is kept aside until then)
    with (NewRun(args.output_dir, settings, active=state.is_main_process and not checkpoint) as new_run,
          StopSignals() as stop_signals):
        with fail_together(state):
            trainer = make_trainer(config, policy, reference, tokenizer, args)
            start_step = 0
            if checkpoint:  # optimizer, beta, TRL's step counter, score moments and this process's RNGs
                start_step = load_checkpoint(checkpoint, trainer, trainer.accelerator)["step"]
        accelerator = trainer.accelerator
        if checkpoint and state.is_main_process:
            truncate_metrics(metrics_path, start_step)
            print(f"resumed from {checkpoint} at step {start_step} (beta={trainer.kl_ctl.value:.4f})", file=sys.stderr)
        # the first SIGINT/SIGTERM finishes the current step and checkpoints it; a second one exits at once (until
        # this block ends: the earlier handlers are put back)
        stop_signals.install()

        # ---- The PPO loop
        response_length = LengthSampler(args.response_min_tokens, args.response_max_tokens + 1)
        generation_kwargs = {k: getattr(args, k) for k in HONEST_SAMPLING} | {
            "max_new_tokens": args.response_max_tokens, "pad_token_id": tokenizer.pad_token_id}
        if args.prompt_column:  # answers end at EOS or a stop string; generate() stops once every row has ended
            generation_kwargs |= {"eos_token_id": tokenizer.eos_token_id} | (
                {"stop_strings": args.stop_strings, "tokenizer": tokenizer} if args.stop_strings else {})
        held_out = held_out_evaluation(args, config, tokenizer, reward_fn, judges, generation_kwargs,
                                       eval_prompts, read_metrics(metrics_path) if checkpoint else [])
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        started = time.perf_counter()
        progress = tqdm(range(start_step + 1, config.steps + 1), initial=start_step, total=config.steps,
                        desc="PPO", disable=not state.is_main_process, dynamic_ncols=True)
        for step in progress:
            batch = dataset[batch_indices(len(dataset), config.batch_size, step, config.seed,
                                          accelerator.process_index, accelerator.num_processes)]
            queries = [torch.tensor(ids, device=accelerator.device) for ids in batch["input_ids"]]
            with fail_together(state):  # each process generates and scores its own slice: a reward error reaches all
                # 1. Generate: the whole batch left-padded per generate() call; each response cut to its own length
                #    (text prefixes) or ended at EOS (whole prompts)
                t0 = time.perf_counter()
                responses, ended = generate(trainer, tokenizer, queries, args, response_length, generation_kwargs, step)
                response_texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
                # 2. Score
                t1 = time.perf_counter()
                scores, parts = score(reward_fn, batch, response_texts, ended, args)

            # 3. PPO step: KL-penalised rewards, advantages, ppo_epochs of minibatch updates, beta update
            t2 = time.perf_counter()
            stats, skipped = ppo_step(trainer, queries, responses, scores)
            seconds = {"generate": t1 - t0, "score": t2 - t1, "ppo_step": time.perf_counter() - t2}

            # 4. Log: one metrics row per step over all processes (held-out columns every eval_steps); every process
            #    learns whether any has received a stop signal
            row = step_row(accelerator, step, scores, parts, stats, skipped, seconds)
            check_finite(row, trainable, args.output_dir)
            if held_out.due(step) and evaluates_here(accelerator):
                row |= held_out.run(trainer, time.perf_counter() - started)
            samples = {"prompt": batch["query"], "response": response_texts, "reward": scores} \
                if args.sample_every and step % args.sample_every == 0 else None
            stop_signal = log_step(accelerator, row, samples, metrics_path, stop_signals, progress, trainer.kl_ctl.value)
            new_run.started()  # the earlier run it replaces, if any, is deleted now

            # 5. Checkpoint: on schedule, at a new best held-out evaluation, and at a stop signal
            best = held_out.due(step) and from_main_process(state, held_out.is_new_best(row))
            if stop_signal or best or step % args.save_steps == 0 or step == config.steps:
                path = save_checkpoint(accelerator, trainer, tokenizer, args.output_dir, step, args.save_total_limit,
                                       settings, keep=held_out.keep)
                if stop_signal:
                    raise stopped(stop_signal, step, path, argv)
        progress.close()
        if stop_signal := agreed_stop(state, stop_signals):  # asked while the last checkpoint was written
            raise stopped(stop_signal, config.steps, find_checkpoint(args.output_dir, "latest"), argv)

    # ---- Save: the tuned policy with its value head and the tokenizer, loadable both ways; then the reports
    try:
        save_policy(accelerator, trainer, tokenizer, args.output_dir)
        with fail_together(state):  # a failed write (a full disk) ends every process with one line
            if evaluates_here(accelerator):
                report_run(trainer, tokenizer, args, model_args, settings, eval_prompts, held_out,
                           state.is_main_process)
        finish(accelerator)  # every process waits for the main one's saving, then the tracker is closed
    except KeyboardInterrupt:  # Ctrl-C, now that the stop handlers are gone: the last checkpoint holds the run
        raise RunError(f"interrupted (Ctrl-C) while saving the tuned policy and the report; the training is in "
                       f"{find_checkpoint(args.output_dir, 'latest')}: save and report it with: "
                       f"{resume_command(argv)}", code=130) from None


if __name__ == "__main__":
    with exits_cleanly(), lost_processes_and_memory_are_one_line(sys.argv[1:]):
        main(sys.argv[1:])
