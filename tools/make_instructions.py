#!/usr/bin/env python
"""Make data/instructions: instructions with a checkable constraint, the constraint's parameters in columns, for the
second offline job (make train-chat, configs/smollm2_chat.yaml). No hub: topics and words are listed here, and every
row is drawn with a fixed seed, so the files are the same on every machine.

Two kinds of instruction (`kind`), mixed 3:1:
    use_word   "Write one sentence about TOPIC. Use the word WORD."   met: names TOPIC, uses WORD in a sentence
    max_words  "Describe TOPIC in at most N words."                  met: names TOPIC in 3..N words
Columns: prompt, kind, topic, word (use_word; else ""), max_words (max_words; else 0). Train and held-out rows share
no (topic, word) pair.

    python tools/make_instructions.py [--out data/instructions] [--train 2048] [--heldout 128] [--seed 0]
"""

import argparse
import json
import random
from pathlib import Path

TOPICS = ["the ocean", "a small town", "coffee", "the moon", "a library", "winter", "a garden", "the city at night",
          "a train journey", "rain", "a mountain", "the desert", "a birthday party", "an old house", "the market",
          "a forest", "summer", "a river", "a concert", "the kitchen", "a bicycle", "the sky", "a museum", "autumn",
          "a school", "the beach", "a storm", "a bakery", "the harbor", "a farm"]
WORDS = ["bright", "quiet", "green", "warm", "cold", "old", "gentle", "happy", "blue", "soft", "busy", "calm", "sweet",
         "tall", "golden", "slow", "fresh", "dark", "small", "loud", "clean", "wild", "simple", "early", "deep"]


def row(rng: random.Random, pairs: list) -> dict:
    topic, word = rng.choice(pairs)
    if rng.random() < 0.75:
        return {"prompt": f"Write one sentence about {topic}. Use the word {word}.", "kind": "use_word",
                "topic": topic, "word": word, "max_words": 0}
    n = rng.choice([5, 6, 7, 8])
    return {"prompt": f"Describe {topic} in at most {n} words.", "kind": "max_words", "topic": topic, "word": "",
            "max_words": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/instructions"))
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--heldout", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pairs = [(t, w) for t in TOPICS for w in WORDS]
    rng.shuffle(pairs)
    held_pairs, train_pairs = pairs[: len(pairs) // 5], pairs[len(pairs) // 5:]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, n, chosen in [("train", args.train, train_pairs), ("heldout", args.heldout, held_pairs)]:
        rows = [row(rng, chosen) for _ in range(n)]
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"saved {args.train} train and {args.heldout} held-out instructions to {args.out}")


if __name__ == "__main__":
    main()
