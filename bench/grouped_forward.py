#!/usr/bin/env python
"""What length-grouped forward passes would save in the PPO update (issue 17, item 3a), measured and not adopted.

TRL's step pads every minibatch to the longest prompt + response of the batch. Sorting a minibatch's rows by length
and running them in groups, each cut to its own longest, computes the same numbers with fewer padded positions but
more, smaller forward passes. This times, on the default job's policy (SmolLM2-135M with LoRA r16) and lengths
(prompts of 2-8 tokens, responses of 4-16, padded to 24), a forward pass without gradients and a forward + backward
of 16 rows: padded to 24, in sorted groups of 8, 4 and 2, and padded to 18 (what the careful loop's one length per
batch costs on average). Medians of REPS runs (default 5).

    python bench/grouped_forward.py        # after `make train` has built models/smollm2-135m
"""
import os
import random
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig
from trl import AutoModelForCausalLMWithValueHead

ROOT = Path(__file__).resolve().parent.parent
REPS = int(os.environ.get("REPS", 5))
torch.manual_seed(0)
random.seed(0)
model = AutoModelForCausalLMWithValueHead.from_pretrained(
    str(ROOT / "models/smollm2-135m"), peft_config=LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM"),
    is_trainable=True)


def forward(ids, mask, grad: bool, group: int = 0):
    """One pass over the rows, or over sorted groups of `group` rows, each cut to its longest; loss = mean output."""
    with torch.set_grad_enabled(grad):
        if not group:
            outputs = [model(input_ids=ids, attention_mask=mask)]
        else:
            lengths = mask.sum(1)
            order = torch.argsort(lengths)
            outputs = []
            for k in range(0, len(order), group):
                rows = order[k:k + group]
                width = int(lengths[rows].max())
                outputs.append(model(input_ids=ids[rows, :width], attention_mask=mask[rows, :width]))
        if grad:
            sum(logits.mean() + values.mean() for logits, _, values in outputs).backward()


def median_seconds(*args) -> float:
    forward(*args)
    times = []
    for _ in range(REPS):
        start = time.perf_counter()
        forward(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


rows, width = 16, 24
lengths = [random.randint(2, 8) + random.randint(4, 16) for _ in range(rows)]
ids = torch.randint(100, 1000, (rows, width))
mask = torch.zeros(rows, width, dtype=torch.long)
for i, n in enumerate(lengths):
    mask[i, :n] = 1
print(f"{rows} rows, {sum(lengths)} real positions of {rows * width}; medians of {REPS}, "
      f"{torch.get_num_threads()} threads")
for grad in (False, True):
    name = "forward + backward" if grad else "forward, no gradients"
    padded = median_seconds(ids, mask, grad)
    print(f"{name}: padded to {width}: {padded:.3f} s")
    for group in (8, 4, 2):
        seconds = median_seconds(ids, mask, grad, group)
        print(f"  sorted groups of {group}: {seconds:.3f} s ({seconds / padded:.2f}x)")
    seconds = median_seconds(ids[:, :18], torch.ones(rows, 18, dtype=torch.long), grad)
    print(f"  all padded to 18 (the careful loop's mean): {seconds:.3f} s ({seconds / padded:.2f}x)")
