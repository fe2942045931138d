"""The output directory: one live run at a time (an OS file lock), and what an earlier run wrote there.

The lock is `flock` on the directory itself: the kernel drops it when the process ends, however it ends, so a
killed run never leaves a stale lock behind, and nothing is written to take it.

A failed start loses nothing: with --overwrite_output_dir the earlier run's files are moved aside (renames inside
output_dir, nothing copied) and deleted only once the new run has logged its first step; a failure before that
removes what the new run wrote and puts them back (after a kill -9, at the next start in that directory)."""

import fcntl
import os
import shutil
import sys
from pathlib import Path

from ppo_lm.errors import RunError, writing
from ppo_lm.model_card import CARD_MARK
from ppo_lm.run_config import save_run_config

# Everything this script writes into output_dir; --overwrite_output_dir removes these and nothing else.
RUN_FILES = ["metrics.jsonl", "run_config.yaml", "eval.md", "eval.json", "training_curves.png",
             "config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
             "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
             "tokenizer.model", "chat_template.jinja", "vocab.txt", "merged", "logs"]
# save_pretrained shards weights above max_shard_size: model-00001-of-00003.safetensors + its index
RUN_PATTERNS = ["checkpoint-*", "model-*-of-*.safetensors", "model.safetensors.index.json",
                "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"]
ASIDE = ".replaced-run"  # the earlier run, kept until the new one has started

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


def run_paths(output_dir) -> list[Path]:
    """What a run of this script wrote to output_dir (and nothing else): its files, sharded weights, checkpoints,
    tracker logs, the merged model, and the model card when it is ours (not a README of the user's)."""
    path = Path(output_dir)
    found = [path / name for name in RUN_FILES if (path / name).exists()]
    found += [p for pattern in RUN_PATTERNS for p in sorted(path.glob(pattern))]
    card = path / "README.md"
    if card.is_file() and CARD_MARK in card.read_text(errors="replace"):
        found.append(card)
    return found


def read_paths(args, model_args) -> list[tuple[str, Path, bool]]:
    """(setting, resolved path, is a directory) for every local path the run reads: the policy, the reference, a
    reward_kwargs value that names a file or a model (the reward's and the judges' classifier), the data and eval
    files, reward files."""
    named = [("model_name_or_path", model_args.model_name_or_path), ("ref_model_name_or_path",
                                                                     args.ref_model_name_or_path)]
    # a reward_kwargs value counts when it names a file or a model directory (config.json): a classifier, a word
    # list; not a directory the reward function itself writes to
    named += [(f"reward_kwargs {key}", value) for key, value in args.reward_kwargs.items() if isinstance(value, str)
              and (os.path.isfile(value) or os.path.isfile(os.path.join(value, "config.json")))]
    named += [("dataset_name", f) for f in args.dataset_name.split(",")] + [("eval_file", args.eval_file)]
    named += [(setting, spec.rsplit(":", 1)[0]) for setting, specs in [("reward_fn", args.reward_fn),
                                                                      ("eval_reward_fns", args.eval_reward_fns)]
              for spec in specs if ":" in spec]
    return [(setting, Path(value).resolve(), os.path.isdir(value)) for setting, value in named
            if value and os.path.exists(value)]


def check_output_dir(args, model_args) -> None:
    """Before anything is loaded or written: output_dir is not empty, is not (nor contains, nor lies inside) a
    directory the run reads from, and holds no files that no run of this script wrote (a directory with an earlier
    run's run_config.yaml may also hold the user's own files: --overwrite_output_dir leaves those)."""
    if not args.output_dir.strip():
        raise RunError("output_dir is empty: set --output_dir to a new directory for this run's model, metrics and "
                       "checkpoints (e.g. runs/ppo)")
    out = Path(args.output_dir).resolve()
    for setting, path, is_dir in read_paths(args, model_args):
        read_dir = path if is_dir else path.parent  # a data file: the directory that holds it
        if out == read_dir:
            where = "is the directory"
        elif read_dir in out.parents and is_dir:
            where = "is inside the directory"
        elif out in path.parents:
            where = "contains"
        else:
            continue
        raise RunError(f"output_dir '{args.output_dir}' {where} {'' if where == 'contains' else 'of '}{setting} "
                       f"'{path}', which the run reads from: its files would be written over or mixed with the "
                       "run's; choose an output_dir of its own (e.g. runs/ppo)")
    if out.is_dir() and not (out / "run_config.yaml").is_file():
        ours = {p.name for p in run_paths(out)} | {ASIDE, f"{ASIDE}.deleting"}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise RunError(f"output_dir '{args.output_dir}' holds files no run of this script wrote ({shown}): "
                           "choose a new or empty output_dir, or move those files elsewhere")


def holds_earlier_run(output_dir: str) -> bool:
    path = Path(output_dir)
    return any((path / name).exists() for name in ["metrics.jsonl", "run_config.yaml"]) or \
        any(path.glob("checkpoint-*"))


def remove(paths) -> None:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


class NewRun:
    """A new run's start in output_dir, undone if it fails before its first step is logged. On entering, whatever an
    earlier run wrote there is moved into OUTPUT_DIR/.replaced-run (only --overwrite_output_dir gets this far with an
    earlier run; a no-op in a new directory) and run_config.yaml is written. `started()`, after the first metrics row,
    deletes the earlier run. Any exception before that, Ctrl-C included, removes what the new run wrote and moves
    the earlier run back. Inactive (a no-op) on a resume and on the processes other than the main one."""

    def __init__(self, output_dir, settings: dict, active: bool):
        self.dir, self.settings, self.active = Path(output_dir), settings, active
        self.aside = self.dir / ASIDE

    def __enter__(self) -> "NewRun":
        if self.active:
            earlier = run_paths(self.dir)
            if earlier:
                self.aside.mkdir()
                for p in earlier:
                    p.rename(self.aside / p.name)
            try:
                with writing("the run's settings", self.dir / "run_config.yaml", self.dir, code=2):
                    save_run_config(self.settings, self.dir)
            except RunError:  # a full disk: __exit__ is not called when __enter__ fails
                undo(self.dir)
                raise
        return self

    def started(self) -> None:
        if self.active:
            self.active = False
            if self.aside.exists():
                gone = self.dir / f"{ASIDE}.deleting"  # one rename: a kill while deleting leaves nothing to restore
                self.aside.rename(gone)
                shutil.rmtree(gone)

    def __exit__(self, kind, value, traceback) -> None:
        if self.active and kind is not None:
            undo(self.dir)


def undo(output_dir: Path) -> None:
    """Remove what a new run wrote, and move the earlier run it was replacing (if any) back."""
    remove(run_paths(output_dir))
    aside = output_dir / ASIDE
    if aside.is_dir():
        for p in aside.iterdir():
            p.rename(output_dir / p.name)
        aside.rmdir()


def recover_interrupted_start(output_dir: str) -> None:
    """A start with --overwrite_output_dir killed before its first step left the earlier run aside: put it back."""
    path = Path(output_dir)
    if (path / f"{ASIDE}.deleting").exists():
        shutil.rmtree(path / f"{ASIDE}.deleting")
    if (path / ASIDE).is_dir():
        lock_output_dir(output_dir)
        undo(path)
        print(f"restored the earlier run in {output_dir}: a start with --overwrite_output_dir had been stopped before "
              "its first step", file=sys.stderr)
