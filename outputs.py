"""The output directory: one live run at a time (an OS file lock), what an earlier run wrote, the run's settings.

The lock is `flock` on the directory itself: the kernel drops it when the process ends, however it ends, so a
killed run never leaves a stale lock behind, and nothing is written to take it.
"""

import dataclasses
import fcntl
import json
import os
import shutil
from pathlib import Path

import yaml

from errors import RunError

# Everything this script writes into output_dir; --overwrite_output_dir removes these and nothing else.
RUN_FILES = ["metrics.jsonl", "run_config.yaml", "eval.md", "eval.json", "training_curves.png",
             "config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
             "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model",
             "chat_template.jinja", "vocab.txt"]
RUN_DIRS = ["merged", "logs"]  # and every checkpoint-N
# Settings that change the shapes of the model, its adapters or the optimizer state: a resume must keep them.
SHAPE_SETTINGS = ["model_name_or_path", "use_peft", "lora_r", "lora_alpha", "lora_target_modules", "torch_dtype"]


_held: dict[str, int] = {}  # directory -> descriptor whose lock this process holds


def lock_output_dir(output_dir: str) -> int:
    """Create output_dir if needed and hold an exclusive lock on it for the life of this process."""
    path = Path(output_dir).resolve()
    if str(path) in _held:
        return _held[str(path)]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only file system, no permission, a file on the way
        raise RunError(f"output_dir '{output_dir}' cannot be created ({e.strerror}): choose a directory you can "
                       "write to") from None
    if not os.access(path, os.W_OK):
        raise RunError(f"output_dir '{output_dir}' is not writable: choose a directory you can write to")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"output_dir '{output_dir}' is in use by another run that is still going: wait for it to end, "
                       "stop it, or choose another output_dir") from None
    _held[str(path)] = fd
    return fd


def holds_earlier_run(output_dir: str) -> bool:
    path = Path(output_dir)
    return any((path / name).exists() for name in ["metrics.jsonl", "run_config.yaml"]) or \
        any(path.glob("checkpoint-*"))


def clear_earlier_run(output_dir: str) -> None:
    """Remove what an earlier run of this script wrote to output_dir (and nothing else)."""
    path = Path(output_dir)
    for directory in [path / name for name in RUN_DIRS] + list(path.glob("checkpoint-*")):
        shutil.rmtree(directory, ignore_errors=True)
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    card = path / "README.md"
    if card.is_file() and CARD_MARK in card.read_text(errors="replace"):  # ours, not a README of the user's
        card.unlink()


def run_settings(settings_objects: list, derived: set[str]) -> dict:
    """Every setting of the run, as a valid --config file would hold it."""
    settings = {f.name: getattr(obj, f.name) for obj in settings_objects for f in dataclasses.fields(obj)
                if f.name not in derived}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}


def save_run_config(settings: dict, directory) -> None:
    Path(directory, "run_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))


def check_resume_settings(settings: dict, checkpoint: Path) -> None:
    """A resume must not change the model, adapter or optimizer shapes the checkpoint was saved with."""
    saved_path = checkpoint / "run_config.yaml"
    if not saved_path.is_file():
        saved_path = checkpoint.parent / "run_config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changed = [f"{k}: {saved[k]!r} -> {settings[k]!r}" for k in SHAPE_SETTINGS
               if k in saved and saved[k] != settings[k]]
    if changed:
        raise RunError(f"cannot resume from {checkpoint}: these settings differ from its run_config.yaml and change "
                       f"the model or optimizer shape ({'; '.join(changed)}); set them back, or start a new run "
                       "with --overwrite_output_dir or another output_dir")


CARD_MARK = "<!-- written by train_ppo.py -->"


def write_model_card(output_dir, settings: dict, eval_md: str | None) -> Path:
    """README.md in output_dir: huggingface_hub's ModelCard with what was tuned, on what, against what reward."""
    from huggingface_hub import ModelCard, ModelCardData

    base = settings["model_name_or_path"]
    base = str(Path(base).resolve()) if Path(base).is_dir() else base
    peft = settings["use_peft"]
    data = ModelCardData(base_model=None if Path(base).is_dir() else base, library_name="peft" if peft else
                         "transformers", tags=["trl", "ppo", "reinforcement-learning"])
    keys = ["learning_rate", "batch_size", "mini_batch_size", "ppo_epochs", "steps", "init_kl_coef", "adap_kl_ctrl",
            "target", "horizon", "seed"] + (["lora_r", "lora_alpha", "lora_target_modules"] if peft else [])
    table = "\n".join(f"| `{k}` | `{settings[k]}` |" for k in keys)
    load = (f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("
            f"\"{Path(output_dir).resolve()}\")  # adapters on {base}" if peft else
            f"from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("
            f"\"{Path(output_dir).resolve()}\")\n# with the PPO value head: trl.AutoModelForCausalLMWithValueHead")
    results = eval_md.split("\n", 2)[2] if eval_md else "No held-out evaluation (set `eval_file`).\n"
    card = ModelCard(f"""---
{data.to_yaml()}
---
{CARD_MARK}
# PPO-tuned {Path(base).name}

`{base}` fine-tuned with PPO (TRL 0.11.4 `PPOTrainer`, adaptive KL control) by `train_ppo.py`
{"as LoRA adapters (the reference is the base model with the adapters off)" if peft else "(all weights)"}.

- **Reward:** `{settings['reward_fn']}` with `{json.dumps(settings['reward_kwargs'])}`
- **Prompts:** the first {settings['prompt_min_tokens']}-{settings['prompt_max_tokens']} tokens of the texts in
  `{settings['dataset_name']}` (column `{settings['text_column']}`); responses of
  {settings['response_min_tokens']}-{settings['response_max_tokens']} tokens, sampled from the policy.

| setting | value |
|---|---|
{table}

Every setting is in `run_config.yaml` (a valid `--config`); one row per PPO step in `metrics.jsonl`.

## Held-out evaluation

{results}
![training curves](training_curves.png)

## Load

```python
{load}
```
""")
    path = Path(output_dir, "README.md")
    card.save(path)
    return path


def check_hub(hub_model_id: str | None) -> None:
    """hub_model_id: the push at the end needs the hub and a token; say so at start-up, not after training."""
    if not hub_model_id:
        return
    from huggingface_hub import constants, whoami

    if constants.HF_HUB_OFFLINE:
        raise RunError(f"hub_model_id '{hub_model_id}': the Hugging Face Hub is offline here (HF_HUB_OFFLINE); unset "
                       "hub_model_id, or push OUTPUT_DIR later from a connected machine with `huggingface-cli upload`")
    try:
        whoami()
    except Exception as e:
        raise RunError(f"hub_model_id '{hub_model_id}': cannot push to the Hugging Face Hub "
                       f"({str(e).splitlines()[0]}); log in with `huggingface-cli login` or unset hub_model_id"
                       ) from None


def push_to_hub(output_dir, hub_model_id: str) -> str:
    """Upload output_dir (model, card, metrics, eval; not checkpoints or tracker logs) to hub_model_id."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_model_id, exist_ok=True)
    return api.upload_folder(folder_path=str(output_dir), repo_id=hub_model_id,
                             ignore_patterns=["checkpoint-*", "logs/*"]).commit_url
