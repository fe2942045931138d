"""The output directory: one live run at a time (an OS file lock), what an earlier run wrote, the run's settings.

The lock is `flock` on the directory itself: the kernel drops it when the process ends, however it ends, so a
killed run never leaves a stale lock behind, and nothing is written to take it.
"""

import dataclasses
import fcntl
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
RUN_DIRS = ["checkpoints", "merged", "logs"]
# Settings that change the shapes of the model, its adapters or the optimizer state: a resume must keep them.
SHAPE_SETTINGS = ["model_name_or_path", "use_peft", "lora_r", "lora_alpha", "lora_target_modules", "torch_dtype"]


_held: dict[str, int] = {}  # directory -> descriptor whose lock this process holds


def lock_output_dir(output_dir: str) -> int:
    """Create output_dir if needed and hold an exclusive lock on it for the life of this process."""
    path = Path(output_dir).resolve()
    if str(path) in _held:
        return _held[str(path)]
    path.mkdir(parents=True, exist_ok=True)
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
    return any((path / name).exists() for name in RUN_FILES + RUN_DIRS)


def clear_earlier_run(output_dir: str) -> None:
    """Remove what an earlier run of this script wrote to output_dir (and nothing else)."""
    path = Path(output_dir)
    for name in RUN_DIRS:
        shutil.rmtree(path / name, ignore_errors=True)
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)


def run_settings(args, config, derived: set[str]) -> dict:
    """Every setting of the run, as a valid --config file would hold it."""
    settings = {**dataclasses.asdict(args),
                **{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in derived}}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}


def save_run_config(settings: dict, directory) -> None:
    Path(directory, "run_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))


def check_resume_settings(settings: dict, checkpoint: Path) -> None:
    """A resume must not change the model, adapter or optimizer shapes the checkpoint was saved with."""
    saved_path = checkpoint / "run_config.yaml"
    if not saved_path.is_file():
        saved_path = checkpoint.parent.parent / "run_config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    changed = [f"{k}: {saved[k]!r} -> {settings[k]!r}" for k in SHAPE_SETTINGS if k in saved and saved[k] != settings[k]]
    if changed:
        raise RunError(f"cannot resume from {checkpoint}: these settings differ from its run_config.yaml and change "
                       f"the model or optimizer shape ({'; '.join(changed)}); set them back, or start a new run "
                       "with --overwrite_output_dir or another output_dir")
