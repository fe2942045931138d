"""Checkpoints: OUTPUT_DIR/checkpoint-N, written to a temporary name and renamed, so a directory named\ncheckpoint-N is always complete."""

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


def save_checkpoint(output_dir: str, step: int, model, tokenizer, optimizer, kl_coef: float, save_total_limit: int,
                    settings: dict) -> Path:
    """Policy + value head, optimizer, KL coefficient, step, RNG states and the run's settings (run_config.yaml).
    Keeps the newest `save_total_limit`."""
    final, tmp = Path(output_dir, f"checkpoint-{step}"), Path(output_dir, f"checkpoint-{step}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "run_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
    np_state = np.random.get_state()
    state = {"step": step, "kl_coef": kl_coef, "python_rng": random.getstate(),
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "trainer_state.json").write_text(json.dumps(state))  # written last: its presence marks completeness
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-save_total_limit]:
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
