#!/usr/bin/env python
"""What the generation phase costs beyond a bare `generate`, outside the training loop: one batch of 128 prompts
(GPT-2-size or tiny policy built locally, as bench_ppo.py), each variant timed REPS times in turn (medians):

- bare `model.generate` of the left-padded batch to 16 tokens (the floor);
- TRL's `PPOTrainer.generate(batch_size=128)` to 16 tokens, and ours: that, each response cut to its sampled length
  and decoded (train_ppo.py's phase 1);
- a vectorised alternative, measured and not adopted: one `generate` call under TRL's
  `unwrap_model_for_generation`, the end-of-sequence and length cuts on one host copy, then decoded;
- the careful TRL loop's phase (one sampled length per batch) and TRL's generate to 10 and 4 tokens.

On a GPU it also prints torch.profiler's table of ours' phase.

    python bench/generation_overhead.py gpt2     # a GPU; `tiny` for a CPU check
"""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import bench_ppo as B  # noqa: E402
from trl.core import LengthSampler  # noqa: E402
from trl.models.utils import unwrap_model_for_generation  # noqa: E402
from ppo_lm.validation import HONEST_SAMPLING  # noqa: E402

size = sys.argv[1] if len(sys.argv) > 1 else "gpt2"
device = "cuda" if torch.cuda.is_available() else "cpu"
work = Path(tempfile.mkdtemp())
paths = {"policy": str(B.build_policy(work / "p", size=size)),
         "classifier": str(B.build_classifier(work / "c", size="tiny")),
         "data": str(B.write_dataset(work / "d.jsonl", n=128 * 4))}
trainer, tok, dataset = B.make_trainer(paths, device, {})
batch, queries = next(B.batches(trainer, dataset, 1))
kw = HONEST_SAMPLING | {"max_new_tokens": 16, "pad_token_id": tok.eos_token_id}
L = LengthSampler(4, 17)
sync = B.sync

def bare():
    tok.padding_side = "left"
    p = tok.pad({"input_ids": batch["input_ids"]}, return_tensors="pt").to(trainer.accelerator.device)
    with torch.no_grad():
        return trainer.accelerator.unwrap_model(trainer.model).pretrained_model.generate(**p, **kw)

def trl_only():
    return trainer.generate(queries, batch_size=128, return_prompt=False, **kw)

def ours():
    r = trainer.generate(queries, batch_size=128, return_prompt=False, **kw)
    r = [x[: L()] for x in r]
    return tok.batch_decode(r, skip_special_tokens=True)

def vectorised():
    tok.padding_side = "left"
    p = tok.pad({"input_ids": batch["input_ids"]}, return_tensors="pt").to(trainer.accelerator.device)
    with unwrap_model_for_generation(trainer.model, trainer.accelerator) as m:
        out = m.generate(**p, **kw)[:, p["input_ids"].shape[1]:]
    rows = out.tolist()
    eos = tok.eos_token_id
    lengths = [min(row.index(eos) + 1 if eos in row else len(row), L()) for row in rows]
    return tok.batch_decode([row[:n] for row, n in zip(rows, lengths)], skip_special_tokens=True)

def careful():
    r = trainer.generate(queries, batch_size=128, return_prompt=False, length_sampler=L,
                         pad_token_id=tok.eos_token_id, **B.GENERATION)
    return tok.batch_decode(r)

def gen_steps(n):
    def f():
        k = kw | {"max_new_tokens": n}
        return trainer.generate(queries, batch_size=128, return_prompt=False, **k)
    return f

fns = {"bare generate 16": bare, "TRL generate 16": trl_only, "ours (TRL generate 16 + cut + decode)": ours,
       "vectorised 16 + cut + decode": vectorised, "careful (one sampled length) + decode": careful,
       "TRL generate 10": gen_steps(10), "TRL generate 4": gen_steps(4)}
print(f"{size} policy on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; batch 128; medians of "
      f"{os.environ.get('REPS', 8)} rounds")
for f in fns.values():
    f()
times = {k: [] for k in fns}
for _ in range(int(os.environ.get("REPS", 8))):
    for k, f in fns.items():
        sync(); t = time.perf_counter(); f(); sync(); times[k].append(time.perf_counter() - t)
for k, v in times.items():
    print(f"{k:45s} median {statistics.median(v)*1000:7.1f} ms  min {min(v)*1000:7.1f} ms")
if device == "cuda":
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ours(); sync()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
