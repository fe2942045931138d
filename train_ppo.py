#!/usr/bin/env python
"""PPO fine-tuning of a causal language model against a reward function, on TRL 0.11.4's PPOTrainer.

    python train_ppo.py --config configs/gpt2_imdb.yaml [--any_setting value ...]
    accelerate launch train_ppo.py --config configs/gpt2_imdb.yaml

One PPO step per batch of prompts: (1) the policy generates responses, (2) the reward function scores them,
(3) PPOTrainer.step turns scores into per-token rewards  r_t = -beta * KL_t (+ score on the last token),
computes GAE advantages and runs ppo_epochs of clipped policy/value updates, then moves beta toward the KL
target (adaptive KL control), (4) we log. Settings: ScriptArguments below plus every field of trl.PPOConfig.
"""

import importlib.util
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

warnings.filterwarnings("ignore", category=FutureWarning)  # TRL 0.11 marks PPOConfig/PPOTrainer deprecated

import torch
import transformers
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from datasets import disable_progress_bars
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from trl import AutoModelForCausalLMWithValueHead, ModelConfig, PPOConfig, PPOTrainer, get_peft_config, set_seed
from trl.commands.cli_utils import TrlParser
from trl.core import LengthSampler
from trl.trainer.utils import AdaptiveKLController, disable_dropout_in_model

from plot import plot_run
from checkpoints import find_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from data import batch_indices, fit_prompts, load_texts, read_eval_prompts
from errors import RunError, together
from evaluation import evaluate, write_eval_report
from metrics import log_to_trackers, scalar_stats, truncate_metrics
from outputs import (check_hub, check_resume_settings, clear_earlier_run, holds_earlier_run, lock_output_dir,
                     push_to_hub, run_settings, save_run_config, write_model_card)
from reward_contract import compute_rewards, load_reward_fn
from validation import UNUSED_FIELDS, JsonDict, check_accelerate_kwargs, check_values, parse_config


@dataclass
class ScriptArguments:
    # models: the policy and LoRA settings are trl.ModelConfig's (model_name_or_path, torch_dtype, use_peft, lora_*)
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Frozen reference for the KL penalty (default: model_name_or_path)."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Dropout off in policy and reference, so PPO ratios and KL are exact."})
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
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (and always at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints to keep (the newest)."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "'latest' (or 'true') or a checkpoint-N directory to continue from."})
    hub_model_id: Optional[str] = field(
        default=None, metadata={"help": "Push OUTPUT_DIR to this hub repo at the end (checked at start-up)."})
    sample_every: int = field(default=20, metadata={"help": "Print a table of samples every N steps; 0 = never."})
    eval_file: Optional[str] = field(
        default=None, metadata={"help": "Held-out prompts, one per line: compare reference and tuned policy at the end."})
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


class FlooredKLController(AdaptiveKLController):
    """TRL's adaptive KL controller (beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * episodes / horizon), with beta
    kept at or above `floor`. While the policy first moves away from the reference its KL is below the target, so
    TRL's rule lowers beta step after step; by the time KL reaches the target beta is a fraction of its start and
    the KL overshoots while beta climbs back. The floor ends that wind-down."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float, floor: float):
        super().__init__(init_kl_coef, target, horizon)
        self.floor = floor

    def update(self, current, n_steps):
        super().update(current, n_steps)
        self.value = max(self.value, self.floor)


# Generation settings under which the responses are samples of the policy itself; PPOTrainer computes
# log-probabilities from the raw logits, so any other setting makes KL(policy || ref) estimates biased.
HONEST_SAMPLING = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "min_length": -1}
DERIVED_PPO_FIELDS = {"world_size", "backward_batch_size", "global_backward_batch_size", "global_batch_size",
                      "is_encoder_decoder", "is_peft_model"}


def check_settings(args: ScriptArguments, config: PPOConfig, model_args: ModelConfig) -> None:
    """Settings that point at files or packages, checked before anything is loaded or written."""
    if not model_args.model_name_or_path:
        raise RunError("setting 'model_name_or_path' is required: a hub id (gpt2) or a local model directory")
    if config.log_with == "tensorboard" and not importlib.util.find_spec("tensorboard"):
        raise RunError("log_with: tensorboard needs the tensorboard package: pip install tensorboard")
    check_hub(args.hub_model_id)
    check_accelerate_kwargs(config)
    if args.min_kl_coef is not None and not config.adap_kl_ctrl:
        raise RunError("min_kl_coef is a floor for the adaptive KL controller, but adap_kl_ctrl is false (beta stays "
                       "at init_kl_coef): set adap_kl_ctrl: true, or remove min_kl_coef")
    if args.min_kl_coef is not None and args.min_kl_coef > config.init_kl_coef:
        raise RunError(f"min_kl_coef ({args.min_kl_coef}) is above init_kl_coef ({config.init_kl_coef}): beta starts at "
                       "init_kl_coef, so set min_kl_coef to at most that")
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise RunError("DeepSpeed is not supported by this script's checkpoints (ZeRO shards the optimizer state, so "
                       "a resume would not be exact): launch with DDP (configs/accelerate/multi_gpu.yaml), with "
                       "use_peft for large models")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise RunError(f"output_dir '{args.output_dir}' is a file, not a directory: choose another output_dir")
    changed = {k: getattr(args, k) for k, v in HONEST_SAMPLING.items() if getattr(args, k) != v}
    if changed:
        warnings.warn(f"generation settings {changed} sample from a distribution other than the policy's, "
                      f"while PPO scores tokens under the policy itself: expect biased, even negative, KL. "
                      f"Use {HONEST_SAMPLING} unless you know why not.")


def from_pretrained(cls, path: str, what: str, **kwargs):
    """cls.from_pretrained from a local directory or the hub, failing with one sentence that names the setting."""
    if os.path.isfile(path):
        raise RunError(f"{what} '{path}' is a file: point it to the directory that holds the model's config.json")
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:  # OSError, ValueError, SafetensorError, ...: the library's first line says what is wrong
        if os.path.isdir(path):
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunError(f"{what} '{path}' could not be loaded ({reason}); point it to a complete saved model "
                           "directory (config.json, weights, tokenizer)") from None
        if path.startswith(("/", ".", "~")) or path.count("/") > 1:  # a path, not a hub id like org/name
            raise RunError(f"{what}: directory '{path}' not found; point it to a saved model directory") from None
        raise RunError(f"{what} '{path}' is not a local directory and could not be fetched from the Hugging Face "
                       f"Hub (offline or unreachable); on a connected machine run `huggingface-cli download {path} "
                       f"--local-dir DIR` and set {what} to DIR, or run `make train` for the offline "
                       f"SmolLM2 job") from None


def load_model(path: str, what: str, args: ScriptArguments, model_args: ModelConfig, peft: bool = False):
    """Causal LM with a value head (with fresh or saved LoRA adapters if peft), dropout off unless asked for."""
    dtype = model_args.torch_dtype or "float32"
    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype), "revision": model_args.model_revision,
              "trust_remote_code": model_args.trust_remote_code, "attn_implementation": model_args.attn_implementation}
    if peft:
        kwargs |= {"is_trainable": True, "peft_config": get_peft_config(model_args)}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "v_head weights not used by GPT2LMHeadModel": TRL loads them
    try:
        model = from_pretrained(AutoModelForCausalLMWithValueHead, path, what, **kwargs)
    except RunError as e:
        if "Target modules" in str(e):  # peft: lora_target_modules names modules the model does not have
            raise RunError(f"lora_target_modules {model_args.lora_target_modules} are not modules of '{path}': name "
                           "linear layers it has (e.g. q_proj v_proj for Llama, c_attn for GPT-2), or leave it "
                           "unset for peft's choice") from None
        raise
    finally:
        transformers.logging.set_verbosity(verbosity)
    if args.disable_dropout:
        disable_dropout_in_model(model)
    return model


def load_prompts(args: ScriptArguments, tokenizer, seed: int):
    """Texts -> prompts: the first 2-8 tokens (a random length per text, as in TRL's example)."""
    texts = load_texts(args.dataset_name, args.dataset_split, args.text_column, args.min_text_length)
    set_seed(seed)
    prompt_length = LengthSampler(args.prompt_min_tokens, args.prompt_max_tokens + 1)

    def tokenize(batch):
        ids = [row[: prompt_length()] for row in tokenizer(batch[args.text_column])["input_ids"]]
        return {"input_ids": ids, "query": tokenizer.batch_decode(ids, skip_special_tokens=True)}

    return texts.map(tokenize, batched=True, remove_columns=texts.column_names, load_from_cache_file=False)


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
    # ---- Settings: parsed and checked (types, ranges, files) before anything is loaded or written
    args, config, model_args = parse_config(TrlParser((ScriptArguments, CheckedPPOConfig, CheckedModelConfig)), argv)
    check_settings(args, config, model_args)
    eval_prompts = read_eval_prompts(args.eval_file) if args.eval_file else None
    settings = run_settings([model_args, args, config], DERIVED_PPO_FIELDS | set(UNUSED_FIELDS))
    # what trackers show as the run's model, data and reward (PPOConfig's own fields are TRL's example's)
    config.model_name, config.query_dataset, config.reward_model = \
        model_args.model_name_or_path, args.dataset_name, args.reward_fn
    set_seed(config.seed)  # before any model is built: a fresh value head's initial weights come from this seed
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # `accelerate launch --cpu`, or set by hand
    disable_progress_bars()  # datasets' bars for filter/map; the PPO bar is the one to watch
    output_dir = Path(args.output_dir)
    metrics_path = output_dir / "metrics.jsonl"

    # Everything that can fail on bad input happens inside `together`: a failure on any process ends them all, and
    # the output directory is only touched after it (nothing runs half-way).
    with together(state):
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint) \
            if args.resume_from_checkpoint else None
        if checkpoint:
            check_resume_settings(settings, checkpoint)
        elif holds_earlier_run(args.output_dir) and not args.overwrite_output_dir:
            raise RunError(f"output_dir '{args.output_dir}' holds an earlier run: resume it with "
                           "--resume_from_checkpoint latest, replace it with --overwrite_output_dir, "
                           "or choose another --output_dir")
        reward_fn = load_reward_fn(args.reward_fn)
        judges = {spec: load_reward_fn(spec, "eval_reward_fns") for spec in args.eval_reward_fns}

        # ---- Models: policy with value head (from the checkpoint when resuming), frozen reference, tokenizer
        remote = {"trust_remote_code": model_args.trust_remote_code, "revision": model_args.model_revision}
        model_config = from_pretrained(AutoConfig, model_args.model_name_or_path, "model_name_or_path", **remote)
        if not model_args.trust_remote_code and model_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise RunError(f"model_name_or_path '{model_args.model_name_or_path}' is a {model_config.model_type} model "
                           f"({', '.join(model_config.architectures or [])}) with no causal-LM head: PPO here tunes a "
                           "causal language model (gpt2, Llama, SmolLM2, ...)")
        tokenizer = from_pretrained(AutoTokenizer, model_args.model_name_or_path, "model_name_or_path", **remote)
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
        if eval_prompts and context:
            # room for the response, and a margin for text that re-tokenizes a little longer after the cut
            eval_prompts = fit_prompts(eval_prompts, tokenizer, max(1, context - args.response_max_tokens - 8))
        policy = load_model(str(checkpoint or model_args.model_name_or_path), "model_name_or_path", args, model_args,
                            model_args.use_peft)
        if model_args.use_peft:  # PPOTrainer then scores the reference as the policy with its adapters disabled
            reference = None
            if os.path.isdir(model_args.model_name_or_path):  # the saved adapter names its base wherever it is loaded
                policy.pretrained_model.peft_config["default"].base_model_name_or_path = \
                    str(Path(model_args.model_name_or_path).resolve())
            n_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
            if state.is_main_process:
                print(f"LoRA: training {n_trainable:,} of {sum(p.numel() for p in policy.parameters()):,} parameters",
                      file=sys.stderr)
        else:
            reference = load_model(args.ref_model_name_or_path or model_args.model_name_or_path,
                                   "ref_model_name_or_path", args, model_args)

        # ---- Data: prompts, in an order that is a pure function of (seed, step) so a resume continues it
        dataset = load_prompts(args, tokenizer, config.seed)
        if len(dataset) < config.batch_size * state.num_processes:
            raise RunError(f"the dataset has {len(dataset)} prompts, fewer than one batch "
                           f"(batch_size {config.batch_size} x {state.num_processes} processes); lower batch_size")
        # The reward function and the judges, called once on two prompts (as their own responses): a wrong model
        # path or label fails here, before anything is written, and their models are loaded once for the run
        probe = dataset[:2]["query"]
        for fn in [reward_fn, *judges.values()]:
            compute_rewards(fn, probe, probe, args.reward_kwargs)
        if state.is_main_process:  # one live run per output_dir; held until this process ends
            lock_output_dir(args.output_dir)

    if state.is_main_process and not checkpoint:
        clear_earlier_run(args.output_dir)  # with --overwrite_output_dir; a no-op in a new directory
        save_run_config(settings, output_dir)
    if config.log_with == "tensorboard":  # accelerate needs a directory for it: OUTPUT_DIR/logs unless given
        config.project_kwargs = {"logging_dir": str(output_dir / "logs"), **config.project_kwargs}

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No dataset is provided")
        trainer = PPOTrainer(config, policy, reference, tokenizer)
    accelerator = trainer.accelerator
    if args.min_kl_coef is not None:  # check_settings: only with adap_kl_ctrl
        trainer.kl_ctl = FlooredKLController(config.init_kl_coef, config.target, config.horizon, args.min_kl_coef)

    start_step = 0
    if checkpoint:  # optimizer, beta, TRL's step counter, score moments and this process's RNGs
        start_step = load_checkpoint(checkpoint, trainer, accelerator)["step"]
        if state.is_main_process:
            truncate_metrics(metrics_path, start_step)
            print(f"resumed from {checkpoint} at step {start_step} (beta={trainer.kl_ctl.value:.4f})", file=sys.stderr)

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
        return save_checkpoint(accelerator, trainer, tokenizer, args.output_dir, step, args.save_total_limit,
                               settings)

    def diverged(step: int, what: str) -> RunError:
        last = list_checkpoints(args.output_dir)
        return RunError(f"step {step}: {what}; training diverged (lower learning_rate, or set score_clip / "
                        f"use_score_scaling); last good checkpoint: {last[-1] if last else 'none'}", code=1)

    # ---- The PPO loop
    response_length = LengthSampler(args.response_min_tokens, args.response_max_tokens + 1)
    generation_kwargs = {k: getattr(args, k) for k in HONEST_SAMPLING} | {
        "max_new_tokens": args.response_max_tokens, "pad_token_id": tokenizer.pad_token_id}
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    progress = tqdm(range(start_step + 1, config.steps + 1), initial=start_step, total=config.steps,
                    desc="PPO", disable=not state.is_main_process, dynamic_ncols=True)
    for step in progress:
        rows = batch_indices(len(dataset), config.batch_size, step, config.seed,
                             accelerator.process_index, accelerator.num_processes)
        batch = dataset[rows]
        queries = [torch.tensor(ids, device=accelerator.device) for ids in batch["input_ids"]]

        # Each process generates and scores its own slice: a reward error or a stop signal on one reaches all
        with together(state, stop_signal) as phase:
            # 1. Generate: the whole batch left-padded per generate() call. Each response is cut to its own
            #    sampled length; the first n tokens of a longer sample are exactly a sample of n tokens.
            t0 = time.perf_counter()
            try:
                responses = trainer.generate(queries, batch_size=args.generation_batch_size, return_prompt=False,
                                             **generation_kwargs)
            except RuntimeError as e:  # torch.multinomial on inf/NaN probabilities: the weights blew up
                if "probability tensor" not in str(e):
                    raise
                raise diverged(step, "sampling found inf/NaN probabilities") from None
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
        row = {"step": step, "env/episodes": len(all_scores), "env/reward_mean": all_scores.mean().item(),
               "env/reward_std": all_scores.std().item(),
               **scalar_stats(stats), "ppo/skipped_minibatches": skipped,
               "time/generate": t1 - t0, "time/score": t2 - t1, "time/ppo_step": t3 - t2}
        if torch.cuda.is_available():  # this step's peak; memory that grows from step to step is a leak
            row["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        bad = [f"{k} is {row[k]}" for k in ("objective/kl", "ppo/loss/total", "ppo/loss/policy", "ppo/loss/value")
               if not math.isfinite(row.get(k, 0.0))]
        if not bad and not math.isfinite(torch.nn.utils.get_total_norm(trainable).item()):
            bad = ["the policy's weights are no longer finite"]  # the next generate() would sample from NaN
        if bad:
            raise diverged(step, bad[0])
        samples = {"prompt": batch["query"], "response": response_texts, "reward": scores} \
            if args.sample_every and step % args.sample_every == 0 else None
        if config.log_with:
            log_to_trackers(accelerator, row, samples)
        if state.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            progress.set_postfix(reward=f"{row['env/reward_mean']:.3f}", kl=f"{row['objective/kl']:.2f}",
                                 beta=f"{trainer.kl_ctl.value:.3f}")
            if samples:
                print_table(f"samples at step {step}", list(samples), *samples.values())

        if phase.stop_signal:  # the same decision on every process, so all checkpoint this step together
            path = checkpoint_now(step)
            resume = " ".join(["python", sys.argv[0], *[a for a in argv if a != "--overwrite_output_dir"]])
            if "--resume_from_checkpoint" not in argv:
                resume += " --resume_from_checkpoint latest"
            raise RunError(f"stopped by {signal.Signals(phase.stop_signal).name} after step {step}; checkpoint "
                           f"saved to {path}; resume with: {resume}", code=128 + phase.stop_signal)
        if step % args.save_steps == 0 or step == config.steps:
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
        if eval_prompts:
            scorers = {args.reward_fn: reward_fn} | judges
            report = evaluate(trainer, tokenizer, eval_prompts, scorers, args.reward_kwargs, generation_kwargs,
                              (args.response_min_tokens, args.response_max_tokens), args.generation_batch_size,
                              config.seed)
            print_table("held-out prompts: reference (before) vs tuned policy (after)",
                        ["prompt", "before", "reward", "after", "reward"], eval_prompts,
                        report["before"]["responses"], report["before"][args.reward_fn]["scores"],
                        report["after"]["responses"], report["after"][args.reward_fn]["scores"], n=8)
            print(write_eval_report(report, output_dir), file=sys.stderr)
        print(f"training curves: {plot_run(output_dir)}", file=sys.stderr)
        eval_md = (output_dir / "eval.md").read_text() if eval_prompts else None
        print(f"model card: {write_model_card(output_dir, settings, eval_md)}", file=sys.stderr)
        if model_args.use_peft and args.save_merged:  # last: merging folds the adapters into the base weights
            policy.pretrained_model.merge_and_unload().save_pretrained(output_dir / "merged", safe_serialization=True)
            tokenizer.save_pretrained(output_dir / "merged")
            print(f"merged model (base + adapters): {output_dir / 'merged'}", file=sys.stderr)
        if args.hub_model_id:
            print(f"pushed to the hub: {push_to_hub(output_dir, args.hub_model_id)}", file=sys.stderr)
    # the other processes wait here for the main one's saving: gloo's shutdown in destroy_process_group hung a
    # process now and then (about 1 run in 10 of the 2-process tests) when the others had already exited
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes log_with's tracker (and the process group)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except RunError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # every process has the same error (errors.together): say it once
            print(f"error: {e}", file=sys.stderr)
        if torch.distributed.is_initialized():
            # gloo's C++ threads, still alive at interpreter teardown, abort a process ("terminate called without an
            # active exception", exit -6) in about 1 run of 15; skip the teardown. Files are closed by now:
            # checkpoints and metrics.jsonl are written with `with`, the tensorboard writer is flushed every step.
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(e.code)
        sys.exit(e.code)
