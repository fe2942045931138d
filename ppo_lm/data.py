"""Data: the texts prompts are cut from, the held-out prompts, and the order batches are drawn in.

Loading fails with one sentence that names the setting; the order is a pure function of (seed, step), so a resumed
run continues exactly where it stopped."""

import os
import warnings
from pathlib import Path

import torch
from datasets import Value, load_dataset

from ppo_lm.errors import RunError, first_line


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1):
    """Row indices for PPO step `step` (1-based) on process `rank`: a fresh shuffle each epoch, drop-last."""
    global_batch = batch_size * world_size
    steps_per_epoch = num_rows // global_batch
    epoch, position = divmod(step - 1, steps_per_epoch)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch))
    start = position * global_batch + rank * batch_size
    return order[start : start + batch_size].tolist()


def load_rows(dataset_name: str, split: str, config: str | None = None):
    """The rows of a dataset: local .json/.jsonl/.csv/.txt file(s) (comma-separated) or a hub dataset. Every way
    loading can fail ends in one sentence naming the setting."""
    files, local = dataset_name.split(","), is_local(dataset_name)
    if local and config:
        raise RunError(f"dataset_config '{config}' is for hub datasets; remove it for local files")
    if local and split != "train":  # datasets reads local files as one split named train
        raise RunError(f"dataset_split '{split}' is for hub datasets; local files are read as one split, 'train': "
                       "leave dataset_split unset and point dataset_name to the file(s) to use")
    if local:
        for f in files:
            if os.path.isdir(f):
                raise RunError(f"dataset_name: '{f}' is a directory; name the data file(s) in it, comma-separated")
            if not os.path.isfile(f):
                raise RunError(f"dataset_name: file '{f}' not found")
    try:
        if local:
            builder = {".jsonl": "json", ".txt": "text"}.get(Path(files[0]).suffix, Path(files[0]).suffix[1:])
            return load_dataset(builder, data_files=files, split="train")
        return load_dataset(dataset_name, config, split=split)
    except Exception as e:  # DatasetGenerationError, JSON and UTF-8 errors, offline, ...: name the cause
        raise unreadable(dataset_name, local, e) from None


def is_local(dataset_name: str) -> bool:
    return Path(dataset_name.split(",")[0]).suffix in {".json", ".jsonl", ".csv", ".txt"}


def unreadable(dataset_name: str, local: bool, e: Exception) -> RunError:
    cause = e.__cause__ or e.__context__ or e
    if local:
        return RunError(f"dataset_name '{dataset_name}' could not be read ({type(cause).__name__}: "
                        f"{first_line(cause)}); give UTF-8 .jsonl (one JSON object per line), .csv or .txt (one text "
                        "per line)")
    return RunError(f"dataset '{dataset_name}' could not be loaded ({first_line(cause)}); offline, point dataset_name "
                    "to local .jsonl/.csv/.txt files, e.g. data/rt_snippets/train.jsonl")


def load_texts(dataset_name: str, split: str, text_column: str, min_length: int, config: str | None = None):
    """The texts prompts are cut from (load_rows), those of at least min_length characters."""
    texts = load_rows(dataset_name, split, config)
    feature = texts.features.get(text_column)
    is_text = isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    if is_text:  # reading the texts decodes them: bad bytes in a .jsonl fail here, not in load_dataset
        try:
            texts = texts.filter(lambda t: t is not None and len(t) >= max(1, min_length), input_columns=text_column)
        except Exception as e:
            raise unreadable(dataset_name, is_local(dataset_name), e) from None
    if text_column not in texts.column_names:
        raise RunError(f"text_column '{text_column}' is not a column of '{dataset_name}': {texts.column_names}; "
                       "set text_column to the column that holds the texts")
    if not is_text:
        raise RunError(f"text_column '{text_column}' of '{dataset_name}' holds {feature}, not text; set text_column "
                       "to a column of strings")
    if len(texts) == 0:
        raise RunError(f"dataset '{dataset_name}' has no text of at least {min_length} characters; "
                       "lower min_text_length or check dataset_name and text_column")
    return texts


def read_eval_prompts(path: str) -> list[str]:
    """eval_file: held-out prompts, one per non-blank line, UTF-8."""
    if not os.path.isfile(path):
        raise RunError(f"eval_file '{path}' not found (or not a file): pass a text file of prompts, one per line")
    try:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise RunError(f"eval_file '{path}' is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8"
                       ) from None
    if not prompts:
        raise RunError(f"eval_file '{path}' has no prompts: write one prompt per line")
    return prompts


def fit_prompts(prompts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Prompts longer than max_tokens keep their last max_tokens tokens (the model continues from the end), with a
    warning; the rest are unchanged."""
    ids = tokenizer(prompts)["input_ids"]
    long = [i for i, row in enumerate(ids) if len(row) > max_tokens]
    if long:
        warnings.warn(f"{len(long)} eval_file prompt(s) are longer than {max_tokens} tokens (the model's context less "
                      f"the response length): kept their last {max_tokens} tokens, e.g. line {long[0] + 1}")
    return [tokenizer.decode(row[-max_tokens:], skip_special_tokens=True) if len(row) > max_tokens else p
            for p, row in zip(prompts, ids)]
