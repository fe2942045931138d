"""Checkpoints: OUTPUT_DIR/checkpoint-N, written to a temporary name and renamed, so a directory named
checkpoint-N is always complete."""

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers.trainer_utils import get_last_checkpoint
from trl.models.utils import unwrap_model_for_generation

from ppo_lm import zero
from ppo_lm.errors import RunError, first_line, writing
from ppo_lm.processes import fail_together
from ppo_lm.run_config import save_run_config


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
        return check_complete(Path(last))
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise RunError(f"resume_from_checkpoint '{spec}' is not a checkpoint directory (no trainer_state.json); "
                       "pass 'latest' or an OUTPUT_DIR/checkpoint-N directory")
    return check_complete(path)


# What every checkpoint holds besides the tokenizer; the weights are one of WEIGHTS; the optimizer state is
# optimizer.pt, or under DeepSpeed the engine's deepspeed/ directory
NEEDED = ["trainer_state.json", "rng-0.pt"]
WEIGHTS = ["model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"]


def check_complete(path: Path) -> Path:
    """A checkpoint with a file deleted or lost (trainer_state.json is written last, so a kill mid-write never
    leaves this) is named with what is missing, before anything is loaded or written."""
    missing = [name for name in NEEDED if not (path / name).is_file()]
    if not (path / "optimizer.pt").is_file() and not (path / "deepspeed").is_dir():
        missing.append("optimizer.pt")
    if not any((path / name).is_file() for name in WEIGHTS):
        missing.append("model weights (model.safetensors or adapter_model.safetensors)")
    if missing:
        raise RunError(f"checkpoint {path} is incomplete: {', '.join(missing)} missing; resume from another "
                       f"checkpoint-N in {path.parent} (pass its path to --resume_from_checkpoint), or start a new run")
    return path


def save_checkpoint(accelerator, trainer, tokenizer, output_dir: str, step: int, save_total_limit: int,
                    settings: dict, keep: set[int] = frozenset()) -> Path:
    """Called on every process. The main process writes the policy with its value head, the tokenizer, the optimizer
    state, the run's settings and trainer_state.json (step, the KL coefficient, TRL's step counter, the running
    score moments of use_score_scaling); every process writes its own RNG states (rng-RANK.pt), so a resumed
    multi-process run samples exactly as an uninterrupted one. Keeps the newest `save_total_limit`, and the steps
    in `keep` (the best held-out evaluation's) besides. A failed write (a full disk) removes the partial
    checkpoint-N.tmp, keeps the earlier checkpoints and ends the run on every process with one line."""
    final, tmp = Path(output_dir, f"checkpoint-{step}"), Path(output_dir, f"checkpoint-{step}.tmp")
    with fail_together(accelerator.state), writing(f"checkpoint {step}", tmp, output_dir):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
    try:
        # each process's files; the first failure reaches all of them
        with fail_together(accelerator.state), writing(f"checkpoint {step}", tmp, output_dir):
            python_rng, numpy_rng = random.getstate(), np.random.get_state()
            torch.save({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all()
                        if torch.cuda.is_available() else [], "python": [python_rng[0], list(python_rng[1]),
                                                                        python_rng[2]],
                        "numpy": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]]},
                       tmp / f"rng-{accelerator.process_index}.pt")
            deepspeed = zero.stage(accelerator) > 0
            if deepspeed:  # every process saves its shard of the optimizer state
                zero.save_engine(trainer.model, tmp)
            with unwrap_model_for_generation(trainer.model, accelerator) as policy:  # gathers ZeRO-3 weights
                if accelerator.is_main_process:
                    policy.save_pretrained(tmp, safe_serialization=True)
            if accelerator.is_main_process:
                tokenizer.save_pretrained(tmp)
                if not deepspeed:
                    torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
                save_run_config(settings, tmp)
        # every process's RNG file is in: mark it complete, rename, prune
        with fail_together(accelerator.state), writing(f"checkpoint {step}", tmp, output_dir):
            if accelerator.is_main_process:
                moments = {k: float(getattr(trainer.running, k)) for k in ("mean", "std", "var", "count")}
                state = {"step": step, "kl_coef": float(trainer.kl_ctl.value), "trl_current_step": trainer.current_step,
                         "score_moments": moments, "num_processes": accelerator.num_processes}
                (tmp / "trainer_state.json").write_text(json.dumps(state))  # last: its presence marks completeness
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
                checkpoints = list_checkpoints(output_dir)
                for old in checkpoints[:-save_total_limit]:
                    if int(CHECKPOINT_DIR.match(old.name).group(1)) not in keep:
                        shutil.rmtree(old, ignore_errors=True)
    except RunError:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_policy(accelerator, trainer, tokenizer, output_dir: str) -> None:
    """The tuned policy with its value head (safetensors; a LoRA policy: its adapters, and the value head as
    pytorch_model.bin) and the tokenizer, in output_dir. Main process; every process waits for it. A failed write
    ends the run in one line: the last checkpoint holds the tuned policy, and a resume from it saves it again."""
    with (fail_together(accelerator.state), writing("the tuned policy", output_dir, output_dir),
          unwrap_model_for_generation(trainer.model, accelerator) as policy):
        if accelerator.is_main_process:
            policy.save_pretrained(output_dir, safe_serialization=True)
            tokenizer.save_pretrained(output_dir)
            print(f"saved the tuned policy, metrics.jsonl and run_config.yaml to {output_dir}", file=sys.stderr)


def load_checkpoint(path: Path, trainer, accelerator) -> dict:
    """Restore what save_checkpoint saved into the trainer and this process's RNGs; return trainer_state.json.
    A damaged file (torn, not plain tensors, not JSON) ends in one line that names it. On another number of
    processes than the checkpoint's: one line says what changes, or, under ZeRO (a shard per process), the resume is
    refused."""
    state = read_checkpoint_file(path / "trainer_state.json", lambda f: json.loads(f.read_text()))
    saved_processes, processes = state.get("num_processes", accelerator.num_processes), accelerator.num_processes
    if saved_processes != processes:
        if zero.stage(accelerator):
            raise RunError(f"resume_from_checkpoint '{path}': it was saved by a DeepSpeed ZeRO run on "
                           f"{saved_processes} process(es), each with its shard of the optimizer state, and this run "
                           f"has {processes}; DeepSpeed cannot re-partition the shards: resume on {saved_processes} "
                           "process(es), launched as that run was")
        if accelerator.is_main_process:  # allowed, as other settings may change on a resume
            batch = trainer.config.batch_size
            print(f"note: {path.name} was saved by a run on {saved_processes} process(es), and this one has "
                  f"{processes}: each step's batch is now {batch * processes} episodes (batch_size x processes) "
                  f"instead of {batch * saved_processes}, and the prompts come in another order from here on; resume "
                  f"on {saved_processes} to continue the run exactly", file=sys.stderr)
    if zero.stage(accelerator):  # the engine's own checkpoint: weights and this process's optimizer shard
        read_checkpoint_file(path, lambda p: zero.load_engine(trainer.model, p))
    else:
        optimizer_state = read_checkpoint_file(path / "optimizer.pt", torch_load)
        try:
            trainer.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise RunError(f"resume_from_checkpoint '{path}': its optimizer state does not fit this model "
                           f"({first_line(e)}); resume with the model and LoRA settings it was saved with"
                           ) from None
    trainer.model.train()  # as PPOTrainer.step leaves it in an uninterrupted run
    trainer.kl_ctl.value = state["kl_coef"]
    trainer.current_step = state["trl_current_step"]
    for k, v in state["score_moments"].items():
        setattr(trainer.running, k, v)
    rank_file = path / f"rng-{accelerator.process_index}.pt"
    rng = read_checkpoint_file(rank_file if rank_file.is_file() else path / "rng-0.pt", torch_load)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, keys, gauss = rng["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state


def torch_load(path: Path):
    return torch.load(path, weights_only=True, map_location="cpu")  # plain tensors only: no code runs on load


def read_checkpoint_file(path: Path, read):
    try:
        return read(path)
    except RunError:
        raise
    except Exception as e:  # UnpicklingError (not plain tensors), a torn zip, bad JSON, ...
        reason = first_line(e)
        raise RunError(f"checkpoint file {path} cannot be read ({type(e).__name__}: {reason[:200]}): it is damaged "
                       f"or was not written by train_ppo.py; resume from another checkpoint-N in {path.parent.parent}"
                       ", or start a new run") from None
