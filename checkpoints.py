"""Checkpoints: OUTPUT_DIR/checkpoint-N, written to a temporary name and renamed, so a directory named
checkpoint-N is always complete."""

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers.trainer_utils import get_last_checkpoint

from errors import RunError


CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")  # transformers' Trainer convention: OUTPUT_DIR/checkpoint-N


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints (trainer_state.json, written last, is there), oldest first."""
    root = Path(output_dir)
    found = [p for p in root.iterdir() if CHECKPOINT_DIR.match(p.name) and (p / "trainer_state.json").is_file()] \
        if root.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_DIR.match(p.name).group(1)))


def find_checkpoint(output_dir: str, spec: str) -> Path:
    """`latest`/`true`: the newest checkpoint in output_dir (transformers' get_last_checkpoint; one a kill left
    incomplete is passed over); anything else: a checkpoint directory."""
    if spec.lower() in ("latest", "true"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last and not Path(last, "trainer_state.json").is_file():
            complete = list_checkpoints(output_dir)
            last = complete[-1] if complete else None
        if not last:
            raise RunError(f"resume_from_checkpoint={spec}: no checkpoint-N in '{output_dir}'; check output_dir or "
                           "start without --resume_from_checkpoint")
        return Path(last)
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise RunError(f"resume_from_checkpoint '{spec}' is not a checkpoint directory (no trainer_state.json); "
                       "pass 'latest' or an OUTPUT_DIR/checkpoint-N directory")
    return path


def save_checkpoint(accelerator, trainer, tokenizer, output_dir: str, step: int, save_total_limit: int,
                    settings: dict) -> Path:
    """Called on every process. The main process writes the policy with its value head, the tokenizer, the optimizer
    state, the run's settings and trainer_state.json (step, the KL coefficient, TRL's step counter, the running
    score moments of use_score_scaling); every process writes its own RNG states (rng-RANK.pt), so a resumed
    multi-process run samples exactly as an uninterrupted one. Keeps the newest `save_total_limit`."""
    final, tmp = Path(output_dir, f"checkpoint-{step}"), Path(output_dir, f"checkpoint-{step}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    torch.save({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                else [], "python": [python_rng[0], list(python_rng[1]), python_rng[2]],
                "numpy": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]]},
               tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        accelerator.unwrap_model(trainer.model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "run_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    accelerator.wait_for_everyone()  # every process's RNG file is in
    if accelerator.is_main_process:
        moments = {k: float(getattr(trainer.running, k)) for k in ("mean", "std", "var", "count")}
        state = {"step": step, "kl_coef": float(trainer.kl_ctl.value), "trl_current_step": trainer.current_step,
                 "score_moments": moments, "num_processes": accelerator.num_processes}
        (tmp / "trainer_state.json").write_text(json.dumps(state))  # written last: its presence marks completeness
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, trainer, accelerator) -> dict:
    """Restore what save_checkpoint saved into the trainer and this process's RNGs; return trainer_state.json."""
    state = json.loads((path / "trainer_state.json").read_text())
    try:
        trainer.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    except (ValueError, KeyError, RuntimeError) as e:
        raise RunError(f"resume_from_checkpoint '{path}': its optimizer state does not fit this model "
                       f"({str(e).splitlines()[0]}); resume with the model and LoRA settings it was saved with"
                       ) from None
    trainer.kl_ctl.value = state["kl_coef"]
    trainer.current_step = state["trl_current_step"]
    for k, v in state["score_moments"].items():
        setattr(trainer.running, k, v)
    rank_file = path / f"rng-{accelerator.process_index}.pt"
    rng = torch.load(rank_file if rank_file.is_file() else path / "rng-0.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, keys, gauss = rng["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state
