"""The run's settings: OUTPUT_DIR/run_config.yaml (a valid --config), and what a resume may not change."""

import dataclasses
from pathlib import Path

import yaml

from ppo_lm.errors import RunError

# Settings that change the shapes of the model, its adapters or the optimizer state: a resume must keep them.
SHAPE_SETTINGS = ["model_name_or_path", "use_peft", "lora_r", "lora_alpha", "lora_target_modules", "torch_dtype"]


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
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise RunError(f"cannot resume from {checkpoint}: {saved_path} is not readable YAML (damaged); resume from "
                       "another checkpoint-N, or start a new run") from None
    changed = [f"{k}: {saved[k]!r} -> {settings[k]!r}" for k in SHAPE_SETTINGS
               if k in saved and saved[k] != settings[k]]
    if changed:
        raise RunError(f"cannot resume from {checkpoint}: these settings differ from its run_config.yaml and change "
                       f"the model or optimizer shape ({'; '.join(changed)}); set them back, or start a new run "
                       "with --overwrite_output_dir or another output_dir")
