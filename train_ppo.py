#!/usr/bin/env python
"""PPO fine-tuning of a causal language model against a reward function, on TRL 0.11.4's PPOTrainer.

    python train_ppo.py --config configs/gpt2_imdb.yaml [--any_setting value ...]
    accelerate launch train_ppo.py --config configs/gpt2_imdb.yaml

One PPO step per batch of prompts: (1) the policy generates responses, (2) the reward function scores them,
(3) PPOTrainer.step turns scores into per-token rewards  r_t = -beta * KL_t (+ score on the last token),
computes GAE advantages and runs ppo_epochs of clipped policy/value updates, then moves beta toward the KL
target (adaptive KL control), (4) we log. Settings: ScriptArguments below plus every field of trl.PPOConfig.
"""

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

warnings.filterwarnings("ignore", category=FutureWarning)  # TRL 0.11 marks PPOConfig/PPOTrainer deprecated

import torch
import transformers
import yaml
from accelerate import PartialState
from datasets import disable_progress_bars, load_dataset
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed
from trl.commands.cli_utils import TrlParser
from trl.core import LengthSampler
from trl.trainer.utils import disable_dropout_in_model

from plot import plot_run
from ppo_utils import (
    JsonDict,
    RunError,
    batch_indices,
    check_types,
    compute_rewards,
    evaluate,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint_state,
    load_reward_fn,
    parse_config,
    save_checkpoint,
    scalar_stats,
    truncate_metrics,
    write_eval_report,
)


@dataclass
class ScriptArguments:
    # models
    model_name_or_path: str = field(default="gpt2", metadata={"help": "Policy to tune: hub id or local directory."})
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Frozen reference for the KL penalty (default: model_name_or_path)."})
    torch_dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32", metadata={"help": "Dtype the policy and reference weights are loaded in."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub (off: safe)."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Dropout off in policy and reference, so PPO ratios and KL are exact."})
    # LoRA: train adapters only; the reference is the base model with adapters disabled (no second copy)
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path (disable_dropout wins)."})
    lora_target_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Module names to adapt (default: peft's choice for the architecture)."})
    save_merged: bool = field(
        default=False, metadata={"help": "With use_peft, also save OUTPUT_DIR/merged: base + adapters in one model."})
    # data: prompts are the first prompt_{min,max}_tokens tokens of each text
    dataset_name: str = field(
        default="stanfordnlp/imdb", metadata={"help": "Hub dataset id, or local .json/.jsonl/.csv/.txt file(s)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the dataset to draw prompts from."})
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    min_text_length: int = field(default=200, metadata={"help": "Drop texts shorter than this many characters."})
    prompt_min_tokens: int = field(default=2, metadata={"help": "Shortest prompt, in tokens (inclusive)."})
    prompt_max_tokens: int = field(default=8, metadata={"help": "Longest prompt, in tokens (inclusive)."})
    # generation: the defaults sample from the policy's own distribution, which keeps the KL estimate honest
    response_min_tokens: int = field(default=4, metadata={"help": "Shortest response, in tokens (inclusive)."})
    response_max_tokens: int = field(default=16, metadata={"help": "Longest response, in tokens (inclusive)."})
    generation_batch_size: int = field(default=128, metadata={"help": "Prompts per generate() call."})
    do_sample: bool = field(default=True, metadata={"help": "Sample responses (greedy decoding breaks PPO)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 = off."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling; 1.0 = off."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    min_length: int = field(default=-1, metadata={"help": "generate() min_length; -1 = no minimum."})
    # reward
    reward_fn: str = field(
        default="sentiment_classifier", metadata={"help": "Function in reward.py, or path/to/file.py:function."})
    reward_kwargs: JsonDict = field(
        default_factory=JsonDict, metadata={"help": "Keyword arguments for the reward function (YAML mapping or JSON)."})
    # outputs
    output_dir: str = field(default="runs/ppo", metadata={"help": "Where the model, metrics and checkpoints go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier run in output_dir."})
    save_every: int = field(default=50, metadata={"help": "Checkpoint every N steps (and always at the end)."})
    keep_last: int = field(default=2, metadata={"help": "Checkpoints to keep."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' or a checkpoint directory to continue from."})
    sample_every: int = field(default=20, metadata={"help": "Print a table of samples every N steps; 0 = never."})
    eval_file: Optional[str] = field(
        default=None, metadata={"help": "Held-out prompts, one per line: compare reference and tuned policy at the end."})


# Generation settings under which the responses are samples of the policy itself; PPOTrainer computes
# log-probabilities from the raw logits, so any other setting makes KL(policy || ref) estimates biased.
HONEST_SAMPLING = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "min_length": -1}
DERIVED_PPO_FIELDS = {"world_size", "backward_batch_size", "global_backward_batch_size", "global_batch_size",
                      "is_encoder_decoder", "is_peft_model"}


def check_settings(args: ScriptArguments, config: PPOConfig) -> None:
    """Settings that can be checked before anything is loaded."""
    for low, high in [("prompt_min_tokens", "prompt_max_tokens"), ("response_min_tokens", "response_max_tokens")]:
        if not 1 <= getattr(args, low) <= getattr(args, high):
            raise RunError(f"need 1 <= {low} <= {high}, got {getattr(args, low)} and {getattr(args, high)}")
    counts = {"steps": config.steps, "generation_batch_size": args.generation_batch_size,
              "save_every": args.save_every, "keep_last": args.keep_last}
    for name, value in counts.items():
        if value < 1:
            raise RunError(f"setting '{name}' must be at least 1, got {value}")
    if config.log_with == "tensorboard" and not importlib.util.find_spec("tensorboard"):
        raise RunError("log_with: tensorboard needs the tensorboard package: pip install tensorboard")
    if args.eval_file and not os.path.isfile(args.eval_file):
        raise RunError(f"eval_file '{args.eval_file}' not found: pass a text file of prompts, one per line")
    changed = {k: getattr(args, k) for k, v in HONEST_SAMPLING.items() if getattr(args, k) != v}
    if changed:
        warnings.warn(f"generation settings {changed} sample from a distribution other than the policy's, "
                      f"while PPO scores tokens under the policy itself: expect biased, even negative, KL. "
                      f"Use {HONEST_SAMPLING} unless you know why not.")


def from_pretrained(cls, path: str, what: str, **kwargs):
    """cls.from_pretrained from a local directory or the hub, failing with one sentence that names the setting."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as e:
        if os.path.isdir(path):
            raise RunError(f"{what} '{path}' could not be loaded: {str(e).splitlines()[0]}") from None
        if path.startswith(("/", ".", "~")) or path.count("/") > 1:  # a path, not a hub id like org/name
            raise RunError(f"{what}: directory '{path}' not found; point it to a saved model directory") from None
        raise RunError(f"{what} '{path}' is not a local directory and could not be fetched from the Hugging Face "
                       f"Hub (offline or unreachable); on a connected machine run `huggingface-cli download {path} "
                       f"--local-dir DIR` and set {what} to DIR, or run `make train` for the offline "
                       f"SmolLM2 job") from None


def load_model(path: str, what: str, args: ScriptArguments, peft: bool = False):
    """Causal LM with a value head (with fresh or saved LoRA adapters if peft), dropout off unless asked for."""
    dtype = args.torch_dtype if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    kwargs = {}
    if peft:
        from peft import LoraConfig

        kwargs = {"is_trainable": True, "peft_config": LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            target_modules=args.lora_target_modules, bias="none", task_type="CAUSAL_LM")}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "v_head weights not used by GPT2LMHeadModel": TRL loads them
    try:
        model = from_pretrained(AutoModelForCausalLMWithValueHead, path, what, dtype=dtype,
                                trust_remote_code=args.trust_remote_code, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if args.disable_dropout:
        disable_dropout_in_model(model)
    return model


def load_prompts(args: ScriptArguments, tokenizer, seed: int):
    """Texts -> prompts: the first 2-8 tokens (a random length per text, as in TRL's example)."""
    local = Path(args.dataset_name.split(",")[0]).suffix in {".json", ".jsonl", ".csv", ".txt"}
    try:
        if local:
            files = args.dataset_name.split(",")
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise RunError(f"dataset_name: file '{missing[0]}' not found")
            builder = {".jsonl": "json", ".txt": "text"}.get(Path(files[0]).suffix, Path(files[0]).suffix[1:])
            texts = load_dataset(builder, data_files=files, split="train")
        else:
            texts = load_dataset(args.dataset_name, split=args.dataset_split)
    except (ConnectionError, FileNotFoundError) as e:
        raise RunError(f"dataset '{args.dataset_name}' could not be loaded ({str(e).splitlines()[0]}); offline, "
                       f"point dataset_name to local .jsonl/.csv/.txt files, e.g. data/prompts_train.txt") from None
    if args.text_column not in texts.column_names:
        raise RunError(f"text_column '{args.text_column}' is not a column of '{args.dataset_name}': "
                       f"{texts.column_names}")
    texts = texts.filter(lambda t: len(t) >= max(1, args.min_text_length), input_columns=args.text_column)
    if len(texts) == 0:
        raise RunError(f"dataset '{args.dataset_name}' has no text of at least {args.min_text_length} characters; "
                       "lower min_text_length or check dataset_name and text_column")

    set_seed(seed)
    prompt_length = LengthSampler(args.prompt_min_tokens, args.prompt_max_tokens + 1)

    def tokenize(batch):
        ids = [row[: prompt_length()] for row in tokenizer(batch[args.text_column])["input_ids"]]
        return {"input_ids": ids, "query": tokenizer.batch_decode(ids, skip_special_tokens=True)}

    return texts.map(tokenize, batched=True, remove_columns=texts.column_names, load_from_cache_file=False)


def save_run_config(args: ScriptArguments, config: PPOConfig) -> None:
    settings = {**dataclasses.asdict(args),
                **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                   if f.name not in DERIVED_PPO_FIELDS}}
    settings["reward_kwargs"] = dict(args.reward_kwargs)
    Path(args.output_dir, "run_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))


def print_table(title: str, columns: list[str], *cells, n: int = 4) -> None:
    """A rich table of the first n samples; float cells shown as rewards."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    for column in columns:
        table.add_column(column)
    for row in list(zip(*cells))[:n]:
        table.add_row(*[f"{c:+.3f}" if isinstance(c, float) else c for c in row])
    Console(stderr=True).print(table)


def main(argv: list[str]) -> None:
    args, config = parse_config(TrlParser((ScriptArguments, PPOConfig)), argv)
    check_types(args, config)
    check_settings(args, config)
    state = PartialState()
    disable_progress_bars()  # datasets' bars for filter/map; the PPO bar is the one to watch
    output_dir = Path(args.output_dir)
    metrics_path = output_dir / "metrics.jsonl"
    checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    earlier_run = metrics_path.exists() or list_checkpoints(args.output_dir)
    if earlier_run and not (checkpoint or args.overwrite_output_dir):
        raise RunError(f"output_dir '{args.output_dir}' holds an earlier run: resume it with "
                       "--resume_from_checkpoint latest, replace it with --overwrite_output_dir, "
                       "or choose another --output_dir")
    reward_fn = load_reward_fn(args.reward_fn)

    # ---- Models: policy with value head (from the checkpoint when resuming), frozen reference, tokenizer
    remote = {"trust_remote_code": args.trust_remote_code}
    model_config = from_pretrained(AutoConfig, args.model_name_or_path, "model_name_or_path", **remote)
    tokenizer = from_pretrained(AutoTokenizer, args.model_name_or_path, "model_name_or_path", **remote)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # PPOTrainer.generate pads prompts on the left by itself; its scoring forward pass pads on the tokenizer's
    # side without position ids, so that side must be the right one or absolute positions shift (trl#2654)
    tokenizer.padding_side = "right"
    context = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if context and args.prompt_max_tokens + args.response_max_tokens > context:
        raise RunError(f"prompt_max_tokens + response_max_tokens = "
                       f"{args.prompt_max_tokens + args.response_max_tokens} exceeds the model's context of "
                       f"{context} tokens; lower one of them")
    policy = load_model(str(checkpoint or args.model_name_or_path), "model_name_or_path", args, args.use_peft)
    if args.use_peft:  # PPOTrainer then scores the reference as the policy with its adapters disabled
        reference = None
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        if state.is_main_process:
            print(f"LoRA: training {trainable:,} of {sum(p.numel() for p in policy.parameters()):,} parameters",
                  file=sys.stderr)
    else:
        reference = load_model(args.ref_model_name_or_path or args.model_name_or_path, "ref_model_name_or_path", args)

    # ---- Data: prompts, in an order that is a pure function of (seed, step) so a resume continues it
    dataset = load_prompts(args, tokenizer, config.seed)
    if len(dataset) < config.batch_size * state.num_processes:
        raise RunError(f"the dataset has {len(dataset)} prompts, fewer than one batch "
                       f"(batch_size {config.batch_size} x {state.num_processes} processes); lower batch_size")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No dataset is provided")
        trainer = PPOTrainer(config, policy, reference, tokenizer)
    accelerator = trainer.accelerator

    start_step = 0
    if checkpoint:
        saved = load_checkpoint_state(checkpoint, trainer.optimizer)
        start_step, trainer.kl_ctl.value = saved["step"], saved["kl_coef"]
        if state.is_main_process:
            truncate_metrics(metrics_path, start_step)
            print(f"resumed from {checkpoint} at step {start_step} (beta={trainer.kl_ctl.value:.4f})", file=sys.stderr)
    elif state.is_main_process:
        if args.overwrite_output_dir:
            metrics_path.unlink(missing_ok=True)
            for old in list_checkpoints(args.output_dir):
                shutil.rmtree(old)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(args, config)

    # ---- Clean stops: the first SIGINT/SIGTERM finishes the step and checkpoints; a second exits at once
    stop_signal = []

    def request_stop(signum, frame):
        if stop_signal:
            print("\nsecond interrupt: exiting now; the last checkpoint is kept", file=sys.stderr)
            os._exit(128 + signum)
        stop_signal.append(signum)
        print(f"\n{signal.Signals(signum).name}: finishing step, then saving a checkpoint "
              "(interrupt again to exit at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def checkpoint_now(step: int) -> Path:
        accelerator.wait_for_everyone()
        if state.is_main_process:
            save_checkpoint(args.output_dir, step, accelerator.unwrap_model(trainer.model), tokenizer,
                            trainer.optimizer, float(trainer.kl_ctl.value), args.keep_last)
        accelerator.wait_for_everyone()
        return output_dir / "checkpoints" / f"step-{step:06d}"

    # ---- The PPO loop
    response_length = LengthSampler(args.response_min_tokens, args.response_max_tokens + 1)
    generation_kwargs = {k: getattr(args, k) for k in HONEST_SAMPLING} | {
        "max_new_tokens": args.response_max_tokens, "pad_token_id": tokenizer.pad_token_id}
    progress = tqdm(range(start_step + 1, config.steps + 1), initial=start_step, total=config.steps,
                    desc="PPO", disable=not state.is_main_process, dynamic_ncols=True)
    for step in progress:
        rows = batch_indices(len(dataset), config.batch_size, step, config.seed,
                             accelerator.process_index, accelerator.num_processes)
        batch = dataset[rows]
        queries = [torch.tensor(ids, device=accelerator.device) for ids in batch["input_ids"]]

        # 1. Generate: the whole batch left-padded per generate() call. Each response is cut to its own
        #    sampled length; the first n tokens of a longer sample are exactly a sample of n tokens.
        t0 = time.perf_counter()
        responses = trainer.generate(queries, batch_size=args.generation_batch_size, return_prompt=False,
                                     **generation_kwargs)
        responses = [r[: response_length()] for r in responses]
        response_texts = tokenizer.batch_decode(responses, skip_special_tokens=True)

        # 2. Score
        t1 = time.perf_counter()
        scores = compute_rewards(reward_fn, batch["query"], response_texts, args.reward_kwargs)

        # 3. PPO step: KL-penalised rewards, advantages, ppo_epochs of minibatch updates, beta update
        t2 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:  # count TRL's skipped minibatches
            warnings.simplefilter("always")
            stats = trainer.step(queries, responses, [torch.tensor(s) for s in scores])
        skipped = sum("exceeds threshold" in str(w.message) for w in caught)
        for w in caught:  # and pass on every other warning (negative KL, ...) as usual
            if "exceeds threshold" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        t3 = time.perf_counter()

        # 4. Log: one metrics row per step, from statistics gathered over all processes
        all_scores = accelerator.gather(torch.tensor(scores, device=accelerator.device)).float()
        row = {"step": step, "env/reward_mean": all_scores.mean().item(), "env/reward_std": all_scores.std().item(),
               **scalar_stats(stats), "ppo/skipped_minibatches": skipped,
               "time/generate": t1 - t0, "time/score": t2 - t1, "time/ppo_step": t3 - t2}
        if torch.cuda.is_available():  # this step's peak; memory that grows from step to step is a leak
            row["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        bad = [k for k in ("objective/kl", "ppo/loss/total", "ppo/loss/policy", "ppo/loss/value")
               if not math.isfinite(row.get(k, 0.0))]
        if bad:
            last = list_checkpoints(args.output_dir)
            raise RunError(f"step {step}: {bad[0]} is {row[bad[0]]}; training diverged (lower learning_rate, "
                           f"or set score_clip / use_score_scaling); last good checkpoint: "
                           f"{last[-1] if last else 'none'}", code=1)
        if config.log_with:
            trainer.log_stats(stats, {"query": batch["query"], "response": response_texts}, scores)
        if state.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            progress.set_postfix(reward=f"{row['env/reward_mean']:.3f}", kl=f"{row['objective/kl']:.2f}",
                                 beta=f"{trainer.kl_ctl.value:.3f}")
            if args.sample_every and step % args.sample_every == 0:
                print_table(f"samples at step {step}", ["prompt", "response", "reward"], batch["query"],
                            response_texts, scores)

        if stop_signal:
            path = checkpoint_now(step)
            resume = " ".join(["python", sys.argv[0], *[a for a in argv if a != "--overwrite_output_dir"]])
            if "--resume_from_checkpoint" not in argv:
                resume += " --resume_from_checkpoint latest"
            raise RunError(f"stopped by {signal.Signals(stop_signal[0]).name} after step {step}; checkpoint "
                           f"saved to {path}; resume with: {resume}", code=128 + stop_signal[0])
        if step % args.save_every == 0 or step == config.steps:
            checkpoint_now(step)
    progress.close()

    # ---- Save: the tuned policy with its value head (safetensors) and the tokenizer, loadable both ways
    accelerator.wait_for_everyone()
    if state.is_main_process:
        policy = accelerator.unwrap_model(trainer.model)
        policy.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        print(f"saved the tuned policy, metrics.jsonl and run_config.yaml to {output_dir}", file=sys.stderr)

    # ---- Evaluate: reference vs tuned policy on held-out prompts, same sampling and seed; draw the curves
    if state.is_main_process:
        if args.eval_file:
            prompts = [line.strip() for line in Path(args.eval_file).read_text().splitlines() if line.strip()]
            report = evaluate(trainer, tokenizer, prompts, reward_fn, args.reward_kwargs, generation_kwargs,
                              args.generation_batch_size, config.seed)
            print_table("held-out prompts: reference (before) vs tuned policy (after)",
                        ["prompt", "before", "reward", "after", "reward"], prompts,
                        report["before"]["responses"], report["before"]["rewards"],
                        report["after"]["responses"], report["after"]["rewards"], n=8)
            print(write_eval_report(report, output_dir), file=sys.stderr)
        print(f"training curves: {plot_run(output_dir)}", file=sys.stderr)
        if args.use_peft and args.save_merged:  # last: merging folds the adapters into the base weights
            policy.pretrained_model.merge_and_unload().save_pretrained(output_dir / "merged", safe_serialization=True)
            tokenizer.save_pretrained(output_dir / "merged")
            print(f"merged model (base + adapters): {output_dir / 'merged'}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)
