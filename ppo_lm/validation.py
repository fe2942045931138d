"""What a valid setting is, declared once and checked before anything is loaded or written: TRL's parser with its
errors turned into one sentence that names the setting, the --config file read first, types, ranges
(RANGES), and the PPOConfig/ModelConfig fields this script does not use."""

import argparse
import dataclasses
import difflib
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import typing
import warnings
from pathlib import Path

import yaml
from accelerate import Accelerator
from accelerate.utils import DynamoBackend, PrecisionType, ProjectConfiguration, is_fp8_available

from ppo_lm.errors import RunError, first_line
from ppo_lm import zero
from ppo_lm.hub import check_hub
from ppo_lm.output_dir import check_output_dir


class JsonDict(dict):
    """A dict setting: a mapping in YAML, or a JSON object on the command line (`--reward_kwargs '{"a": 1}'`)."""

    def __init__(self, value=()):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"not a JSON object: {e}") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"not a JSON object: {value!r}")
        super().__init__(value)


# Allowed values, declared once for every numeric setting the script uses, in interval notation. Checked while the
# settings are parsed (ScriptArguments and CheckedPPOConfig call check_values), before anything is loaded or written.
RANGES = {
    # ScriptArguments
    "lora_r": "[1, inf)", "lora_alpha": "(0, inf)", "lora_dropout": "[0, 1)", "min_text_length": "[0, inf)",
    "prompt_min_tokens": "[1, inf)", "prompt_max_tokens": "[1, inf)", "response_min_tokens": "[1, inf)",
    "response_max_tokens": "[1, inf)", "generation_batch_size": "[1, inf)", "top_k": "[0, inf)", "top_p": "(0, 1]",
    "temperature": "(0, inf)", "min_length": "[-1, inf)", "save_steps": "[1, inf)", "save_total_limit": "[1, inf)",
    "sample_every": "[0, inf)", "min_kl_coef": "[0, inf)", "eval_steps": "[0, inf)", "eval_samples": "[1, inf)",
    # trl.PPOConfig
    "seed": "[0, 4294967295]", "steps": "[1, inf)", "learning_rate": "(0, inf)", "init_kl_coef": "[0, inf)",
    "target": "(0, inf)", "horizon": "(0, inf)", "gamma": "[0, 1]", "lam": "[0, 1]", "cliprange": "(0, inf)",
    "cliprange_value": "(0, inf)", "vf_coef": "[0, inf)", "batch_size": "[1, inf)", "mini_batch_size": "[1, inf)",
    "gradient_accumulation_steps": "[1, inf)", "ppo_epochs": "[1, inf)", "max_grad_norm": "(0, inf)",
    "target_kl": "(0, inf)", "ratio_threshold": "(0, inf)", "score_clip": "(0, inf)",
}
# trl.PPOConfig / trl.ModelConfig fields this script does not read, with what to set instead. They are rejected when
# given; model_name / query_dataset / reward_model are filled in from the run's own settings for the trackers.
UNUSED_FIELDS = {
    "model_name": "model_name_or_path", "query_dataset": "dataset_name", "reward_model": "reward_fn",
    "task_name": "exp_name", "forward_batch_size": "mini_batch_size", "optimize_cuda_cache": "optimize_device_cache",
    "remove_unused_columns": None, "dataset_num_proc": None, "push_to_hub_if_best_kwargs": "hub_model_id",
    "compare_steps": None, "load_in_8bit": None, "load_in_4bit": None, "bnb_4bit_quant_type": None,
    "use_bnb_nested_quant": None, "lora_task_type": None,
}
# Settings renamed to transformers' Trainer names; the old names get a one-line error naming the new ones.
RENAMED = {"save_every": "save_steps", "keep_last": "save_total_limit"}


def in_range(value, interval: str) -> bool:
    low, high = (float(x) for x in interval[1:-1].split(","))
    return (low <= value if interval[0] == "[" else low < value) and (value <= high if interval[-1] == "]"
                                                                     else value < high)


def check_values(obj) -> None:
    """Types, then RANGES, unused PPOConfig fields, lora_* without use_peft and min <= max, for one settings
    dataclass; RunError names the setting."""
    check_types(obj)
    lora_given = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name.startswith(("lora_", "use_rslora")) and value != default:
            lora_given.append(f.name)
        if f.name in RANGES and value is not None and not in_range(value, RANGES[f.name]):
            raise RunError(f"setting '{f.name}' must be in {RANGES[f.name]}, got {value!r}; set it within that "
                           f"range (default: {default!r})")
        if f.name in UNUSED_FIELDS and value != default:
            instead = UNUSED_FIELDS[f.name]
            raise RunError(f"setting '{f.name}' is a {type(obj).__mro__[1].__name__} field this script does not use: "
                           + (f"set '{instead}' instead" if instead else "remove it"))
    if lora_given and not getattr(obj, "use_peft", True):
        raise RunError(f"{lora_given[0]} is set but use_peft is false, so no LoRA adapters would be trained (all "
                       "weights would be): set use_peft: true, or remove the lora_* settings")
    for low, high in [("prompt_min_tokens", "prompt_max_tokens"), ("response_min_tokens", "response_max_tokens")]:
        if hasattr(obj, low) and getattr(obj, low) > getattr(obj, high):
            raise RunError(f"need {low} <= {high}, got {getattr(obj, low)} and {getattr(obj, high)}; "
                           f"raise {high} or lower {low}")


def parse_config(parser, argv: list[str]):
    """Run TrlParser over argv (defaults < --config YAML < command line). Raises RunError on bad input."""
    known = sorted(action.dest for action in parser._actions)

    def unknown(message: str) -> RunError:
        # TRL/HfArgumentParser list the unused keys or words, quoted: take the first one
        name = re.search(r"'([^']+)'", message).group(1).lstrip("-").split("=")[0].replace("-", "_")
        if name in RENAMED:
            return RunError(f"setting '{name}' is now '{RENAMED[name]}', as in transformers' Trainer: "
                            f"rename it in the config or command line")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see `python train_ppo.py --help` for the settings"
        return RunError(f"unknown setting '{name}': {hint}")

    def error(message):  # argparse's own errors (bad type, missing value): one line, not the 80-line usage
        raise RunError(f"{message}; see `python train_ppo.py --help`")

    parser.error = error
    parser.allow_abbrev = False  # --save_ev is a typo, not save_every
    for action in parser._actions:  # dict settings (tracker_kwargs, ...) take JSON on the command line
        if action.type is dict:
            action.type = JsonDict
    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    if argv.count("--config") > 1:
        raise RunError("--config is given more than once: pass one config file, and override its settings on the "
                       "command line")
    if "--config" in argv:
        path = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else ""
        read_config_file(path)
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        return parser.parse_args_and_config()
    except ValueError as e:
        text = str(e)
        if text.startswith("Some specified"):  # unused YAML keys or command-line words
            raise unknown(text) from None
        if "must be a multiple of" in text:  # PPOConfig's exact_div check
            raise RunError(
                f"batch_size must be a multiple of mini_batch_size * gradient_accumulation_steps (got "
                f"{text.split('division: ')[1]}); change one of them so the division is exact") from None
        raise RunError(f"invalid setting: {first_line(e)}") from None
    except ImportError as e:  # PPOConfig checks that log_with's package is installed
        raise RunError(f"log_with: {e}") from None
    finally:
        sys.argv = saved_argv


def read_config_file(path: str) -> dict:
    """The --config file as TRL's parser will read it, checked first: an existing, UTF-8, YAML mapping."""
    if not os.path.isfile(path):
        raise RunError(f"config file '{path}' not found: pass an existing YAML file to --config")
    try:
        settings = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RunError(f"config file '{path}' is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8"
                       ) from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise RunError(f"config file '{path}' is not valid YAML{at}: {problem}; write one `setting: value` per line"
                       ) from None
    if settings is None:
        raise RunError(f"config file '{path}' is empty: write one `setting: value` per line, or leave out --config")
    if not isinstance(settings, dict):
        raise RunError(f"config file '{path}' must be a mapping of `setting: value` lines, got a "
                       f"{type(settings).__name__}")
    if "env" in settings and not isinstance(settings["env"], dict):
        raise RunError(f"config file '{path}': 'env' must be a mapping of environment variables")
    return settings


def check_types(*dataclass_objects) -> None:
    """YAML values skip argparse's type conversion: check each setting has its declared type."""
    for obj in dataclass_objects:
        for f in dataclasses.fields(obj):
            value, kind = getattr(obj, f.name), f.type  # HfArgumentParser has already unwrapped Optional[X]
            if value is None and f.default is None:
                continue
            if f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory(), dict):
                if not isinstance(value, dict):
                    raise RunError(f"setting '{f.name}' must be a mapping (YAML) or a JSON object (command line), "
                                   f"got {value!r}")
            elif typing.get_origin(kind) is list:
                item, given = (typing.get_args(kind) or (str,))[0], value
                if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    setattr(obj, f.name, value := [value])
                if item is float and isinstance(value, list):
                    value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
                    setattr(obj, f.name, value)
                if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool)
                                                          for v in value):
                    what = "names" if item is str else "numbers"
                    raise RunError(f"setting '{f.name}' must be a list of {what}, got {given!r}")
            elif typing.get_origin(kind) is typing.Literal:
                if value not in typing.get_args(kind):
                    raise RunError(f"setting '{f.name}' must be one of {list(typing.get_args(kind))}, got {value!r}")
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(obj, f.name, float(value))
            elif kind in (int, float, str, bool) and not (
                isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            ):
                raise RunError(f"setting '{f.name}' must be a {kind.__name__}, got {value!r}")


# Accelerator arguments that PPOTrainer sets itself from other settings
ACCELERATOR_SET_BY = {"log_with": "log_with", "gradient_accumulation_steps": "gradient_accumulation_steps",
                      "project_config": "project_kwargs"}


def check_accelerate_kwargs(config) -> None:
    """PPOConfig's accelerator_kwargs, project_kwargs and tracker_kwargs go to accelerate (Accelerator,
    ProjectConfiguration, init_trackers) inside PPOTrainer, after output_dir is in use: check them against accelerate's
    own signatures first, so a typo ends in one line before anything is written."""
    accepted = set(inspect.signature(Accelerator).parameters) - set(ACCELERATOR_SET_BY)
    for key in config.accelerator_kwargs:
        if key in ACCELERATOR_SET_BY:
            raise RunError(f"accelerator_kwargs: '{key}' is set from the setting '{ACCELERATOR_SET_BY[key]}'; "
                           f"set that instead")
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            raise RunError(f"accelerator_kwargs: '{key}' is not an argument of accelerate's Accelerator"
                           + (f"; did you mean '{close[0]}'?" if close else f" (one of {sorted(accepted)})"))
    precision = config.accelerator_kwargs.get("mixed_precision")
    if precision is not None and precision not in PrecisionType.list():
        raise RunError(f"accelerator_kwargs: mixed_precision must be one of {PrecisionType.list()}, got {precision!r}")
    if precision == "fp8" and not is_fp8_available():
        raise RunError("accelerator_kwargs: mixed_precision 'fp8' needs transformer_engine or MS-AMP installed (and a "
                       "GPU that has fp8): use bf16, or install one of them")
    backends = [b.value.lower() for b in DynamoBackend]
    backend = config.accelerator_kwargs.get("dynamo_backend")
    if backend is not None and str(backend).lower() not in backends:
        raise RunError(f"accelerator_kwargs: dynamo_backend must be one of {backends}, got {backend!r}")
    try:
        ProjectConfiguration(**config.project_kwargs)
    except TypeError as e:
        fields = sorted(f.name for f in dataclasses.fields(ProjectConfiguration))
        raise RunError(f"project_kwargs: {str(e).split('() ')[-1]}; accelerate's ProjectConfiguration takes {fields}"
                       ) from None
    for tracker, kwargs in config.tracker_kwargs.items():
        if not isinstance(kwargs, dict):
            raise RunError(f"tracker_kwargs: the value of '{tracker}' must be a mapping of that tracker's init "
                           f"arguments, got {kwargs!r}; e.g. " + '{"wandb": {"entity": "my-team"}}')


# Generation settings under which the responses are samples of the policy itself; PPOTrainer computes
# log-probabilities from the raw logits, so any other setting makes KL(policy || ref) estimates biased.
HONEST_SAMPLING = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "min_length": -1}


def check_settings(args, config, model_args) -> None:
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
        raise RunError(f"min_kl_coef ({args.min_kl_coef}) is above init_kl_coef ({config.init_kl_coef}): beta starts "
                       "at init_kl_coef, so set min_kl_coef to at most that")
    if args.eval_steps and not args.eval_file:
        raise RunError(f"eval_steps {args.eval_steps} evaluates on held-out prompts, but no eval_file is set: set "
                       "eval_file (one prompt per line), or eval_steps: 0")
    if args.reward_weights and len(args.reward_weights) != len(args.reward_fn):
        raise RunError(f"reward_weights has {len(args.reward_weights)} weight(s) for {len(args.reward_fn)} reward_fn "
                       "function(s): give one weight per function, in the same order (or none: all 1.0)")
    if not all(math.isfinite(w) for w in args.reward_weights):
        raise RunError(f"reward_weights must be finite numbers, got {args.reward_weights}")
    if len(set(args.reward_fn)) < len(args.reward_fn):
        raise RunError(f"reward_fn names a function twice ({args.reward_fn}): give each once, with its weight")
    if not args.prompt_column:
        given = [name for name in ("chat_template", "system_prompt", "stop_strings", "missing_eos_penalty")
                 if getattr(args, name)]
        if given:
            raise RunError(f"{given[0]} applies to whole prompts, which end at EOS: set prompt_column to the dataset's "
                           f"column of prompts, or remove {given[0]}")
    elif args.one_length_per_batch:
        raise RunError("one_length_per_batch draws response lengths for text prefixes; with prompt_column responses "
                       "end at EOS: remove one of them")
    zero.check(args.save_merged)
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise RunError(f"output_dir '{args.output_dir}' is a file, not a directory: choose another output_dir")
    check_output_dir(args, model_args)
    changed = {k: getattr(args, k) for k, v in HONEST_SAMPLING.items() if getattr(args, k) != v}
    if changed:
        warnings.warn(f"generation settings {changed} sample from a distribution other than the policy's, "
                      f"while PPO scores tokens under the policy itself: expect biased, even negative, KL. "
                      f"Use {HONEST_SAMPLING} unless you know why not.")
