"""Helpers for train_ppo.py that deserve their own tests: config errors, the reward contract, data order,
checkpoints and the metrics file. train_ppo.py holds the algorithm; this file holds the plumbing."""

import dataclasses
import difflib
import importlib.util
import json
import math
import numbers
import os
import random
import re
import shutil
import sys
import typing
from pathlib import Path

import numpy as np
import torch
from trl.core import convert_to_scalar


class RunError(Exception):
    """An error the user can fix; train_ppo.py prints its one-line message and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class JsonDict(dict):
    """A dict setting: a mapping in YAML, or a JSON object on the command line (`--reward_kwargs '{"a": 1}'`)."""

    def __init__(self, value=()):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"not a JSON object: {e}") from None
        super().__init__(value)


# ---------------------------------------------------------------------------------------------------------------
# Config: TRL's parser, with its errors turned into one sentence that names the setting.


def parse_config(parser, argv: list[str]):
    """Run TrlParser over argv (defaults < --config YAML < command line). Raises RunError on bad input."""
    known = sorted(action.dest for action in parser._actions)

    def unknown(message: str) -> RunError:
        # TRL/HfArgumentParser list the unused keys or words, quoted: take the first one
        name = re.search(r"'([^']+)'", message).group(1).lstrip("-").split("=")[0].replace("-", "_")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see `python train_ppo.py --help` for the settings"
        return RunError(f"unknown setting '{name}': {hint}")

    def error(message):  # argparse's own errors (bad type, missing value): one line, not the 80-line usage
        raise RunError(f"{message}; see `python train_ppo.py --help`")

    parser.error = error
    if "--config" in argv:
        path = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else ""
        if not os.path.isfile(path):
            raise RunError(f"config file '{path}' not found: pass an existing YAML file to --config")
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
        raise RunError(f"invalid setting: {text}") from None
    except ImportError as e:  # PPOConfig checks that log_with's package is installed
        raise RunError(f"log_with: {e}") from None
    finally:
        sys.argv = saved_argv


def check_types(*dataclass_objects) -> None:
    """YAML values skip argparse's type conversion: check each simple setting has its declared type."""
    for obj in dataclass_objects:
        for f in dataclasses.fields(obj):
            value, kind = getattr(obj, f.name), f.type  # HfArgumentParser has already unwrapped Optional[X]
            if value is None and f.default is None:
                continue
            if typing.get_origin(kind) is typing.Literal:
                if value not in typing.get_args(kind):
                    raise RunError(f"setting '{f.name}' must be one of {list(typing.get_args(kind))}, got {value!r}")
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(obj, f.name, float(value))
            elif kind in (int, float, str, bool) and not (
                isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            ):
                raise RunError(f"setting '{f.name}' must be a {kind.__name__}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Rewards: find the function, call it, and check what it returned.


def load_reward_fn(spec: str):
    """`name` of a function in reward.py, or `path/to/file.py:function`."""
    if ":" in spec:
        path, name = spec.rsplit(":", 1)
        if not os.path.isfile(path):
            raise RunError(f"reward_fn '{spec}': file '{path}' not found; use path/to/file.py:function")
        module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise RunError(f"reward_fn '{spec}': importing '{path}' failed: {type(e).__name__}: {e}") from None
    else:
        import reward as module

        name = spec
    fn = getattr(module, name, None)
    if not callable(fn):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
        raise RunError(f"reward_fn '{spec}': no function '{name}' in {module.__file__}; available: {available}")
    return fn


def compute_rewards(fn, prompts: list[str], responses: list[str], kwargs: dict) -> list[float]:
    """Call a reward function and enforce its contract: one finite number per response."""
    name = getattr(fn, "__name__", str(fn))
    try:
        scores = fn(prompts, responses, **kwargs)
    except Exception as e:
        # find the first sample it fails on, so the message can show it
        for i, (p, r) in enumerate(zip(prompts, responses)):
            try:
                fn([p], [r], **kwargs)
            except Exception:
                raise RunError(
                    f"reward function '{name}' raised {type(e).__name__}: {e} — on sample {i}: "
                    f"prompt={p!r} response={r!r}"
                ) from None
        raise RunError(f"reward function '{name}' raised {type(e).__name__}: {e} on the batch") from None
    if isinstance(scores, torch.Tensor | np.ndarray):
        scores = scores.tolist()
    if not isinstance(scores, list | tuple) or len(scores) != len(responses):
        got = f"{len(scores)} values" if hasattr(scores, "__len__") else type(scores).__name__
        raise RunError(f"reward function '{name}' returned {got} for {len(responses)} responses; "
                       "it must return one float per response")
    for i, s in enumerate(scores):
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            s = s.item()
        if not isinstance(s, numbers.Real) or isinstance(s, bool):
            raise RunError(f"reward function '{name}' returned a non-number at index {i}: {s!r}")
        if not math.isfinite(s):
            raise RunError(f"reward function '{name}' returned {s} at index {i} (response {responses[i]!r}); "
                           "rewards must be finite")
    return [float(s) for s in scores]


# ---------------------------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, step), so a resumed run continues exactly where it stopped.


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1):
    """Row indices for PPO step `step` (1-based) on process `rank`: a fresh shuffle each epoch, drop-last."""
    global_batch = batch_size * world_size
    steps_per_epoch = num_rows // global_batch
    epoch, position = divmod(step - 1, steps_per_epoch)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch))
    start = position * global_batch + rank * batch_size
    return order[start : start + batch_size].tolist()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary name and renamed, so a directory named step-N is always complete.

STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(output_dir: str) -> list[Path]:
    root = Path(output_dir, "checkpoints")
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state.json").is_file()] \
        if root.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def find_checkpoint(output_dir: str, spec: str) -> Path:
    """`latest` (the newest complete checkpoint in output_dir) or a checkpoint directory."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise RunError(f"resume_from_checkpoint=latest: no checkpoint in '{output_dir}/checkpoints'; "
                           "check output_dir or start without --resume_from_checkpoint")
        return found[-1]
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise RunError(f"resume_from_checkpoint '{spec}' is not a checkpoint directory (no trainer_state.json); "
                       "pass 'latest' or a directory under OUTPUT_DIR/checkpoints")
    return path


def save_checkpoint(output_dir: str, step: int, model, tokenizer, optimizer, kl_coef: float, keep_last: int) -> Path:
    """Policy + value head, optimizer, KL coefficient, step and RNG states. Keeps the newest `keep_last`."""
    root = Path(output_dir, "checkpoints")
    final, tmp = root / f"step-{step:06d}", root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
    np_state = np.random.get_state()
    state = {"step": step, "kl_coef": kl_coef, "python_rng": random.getstate(),
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "trainer_state.json").write_text(json.dumps(state))  # written last: its presence marks completeness
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_checkpoint_state(path: Path, optimizer) -> dict:
    """Restore optimizer and RNG states in place; return trainer_state.json (step, kl_coef)."""
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((path / "trainer_state.json").read_text())
    version, *rest = state["python_rng"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state


# ---------------------------------------------------------------------------------------------------------------
# Metrics: one JSON object per PPO step in OUTPUT_DIR/metrics.jsonl.


def scalar_stats(stats: dict) -> dict:
    """The single-number entries of TRL's step statistics (objective/kl, objective/kl_coef — the beta this step
    used —, ppo/loss/*, ...), as plain floats; histograms are left out."""
    return {k: float(v) for k, v in convert_to_scalar(stats).items() if isinstance(v, numbers.Real)}


def read_metrics(path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_metrics(path, last_step: int) -> None:
    """On resume, drop rows written after the checkpoint, so step numbers continue without duplicates."""
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = Path(f"{path}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: the reference and the tuned policy on held-out prompts, same sampling settings and seed.


def evaluate(trainer, tokenizer, prompts: list[str], reward_fn, reward_kwargs: dict, generation_kwargs: dict,
             batch_size: int, seed: int) -> dict:
    """Reward before (reference) and after (tuned policy), and KL(policy || reference) on the policy's samples."""
    from contextlib import nullcontext

    unwrap = trainer.accelerator.unwrap_model
    policy = unwrap(trainer.model)
    # with LoRA the reference is the policy with its adapters disabled (TRL's optional_peft_ctx)
    reference = policy if trainer.is_peft_model else unwrap(trainer.ref_model)
    as_reference = trainer.optional_peft_ctx
    device = trainer.accelerator.device
    queries = [torch.tensor(ids, device=device) for ids in tokenizer(prompts)["input_ids"]]
    report, samples = {"prompts": prompts}, {}
    for name, model, context in [("before", reference, as_reference), ("after", policy, nullcontext)]:
        torch.manual_seed(seed)
        with context():
            samples[name] = trainer._generate_batched(model, queries, batch_size=batch_size, return_prompt=False,
                                                      **generation_kwargs)
        texts = tokenizer.batch_decode(samples[name], skip_special_tokens=True)
        report[name] = {"responses": texts, "rewards": compute_rewards(reward_fn, prompts, texts, reward_kwargs)}
    # TRL's KL estimator, as in objective/kl, on the tuned policy's samples: sum of log pi - log pi_ref per response
    responses = samples["after"]
    inputs = trainer.prepare_model_inputs(queries, responses)
    with torch.no_grad():
        logprobs, _, _, masks = trainer.batched_forward_pass(policy, queries, responses, inputs)
        with as_reference():
            ref_logprobs, *_ = trainer.batched_forward_pass(reference, queries, responses, inputs)
    report["kl"] = ((logprobs - ref_logprobs) * masks).sum(1).mean().item()
    for name in ("before", "after"):
        rewards = torch.tensor(report[name]["rewards"])
        report[name] |= {"mean": rewards.mean().item(), "median": rewards.median().item()}
    return report


def write_eval_report(report: dict, output_dir, n_samples: int = 10) -> str:
    """eval.json (all samples) and eval.md (summary + sample table); returns the summary line."""
    before, after = report["before"], report["after"]
    summary = (f"held-out reward: mean {before['mean']:+.3f} -> {after['mean']:+.3f}, median {before['median']:+.3f}"
               f" -> {after['median']:+.3f}; KL(policy || reference) {report['kl']:.2f} nats on "
               f"{len(report['prompts'])} prompts")
    rows = [f"| {p} | {b} | {before_r:+.3f} | {a} | {after_r:+.3f} |".replace("\n", " ")
            for p, b, before_r, a, after_r in list(zip(report["prompts"], before["responses"], before["rewards"],
                                                        after["responses"], after["rewards"]))[:n_samples]]
    Path(output_dir, "eval.md").write_text(
        f"# Evaluation on held-out prompts\n\n{summary}\n\n| | before (reference) | after (tuned) |\n|---|---|---|\n"
        f"| mean reward | {before['mean']:+.3f} | {after['mean']:+.3f} |\n"
        f"| median reward | {before['median']:+.3f} | {after['median']:+.3f} |\n\n"
        "| prompt | before | reward | after | reward |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    Path(output_dir, "eval.json").write_text(json.dumps(report, indent=1))
    return summary
