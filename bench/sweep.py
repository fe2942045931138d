#!/usr/bin/env python
"""A small sweep of the default job's learning settings: each variant is configs/smollm2_sentiment.yaml with a few
settings changed, trained for its `steps` with a held-out evaluation every 6 steps on the first 64 held-out prompts,
then the end-of-run report on all 256. Runs go two at a time, one thread each (a 2-core machine), so their times are
not the default job's; the table is about learning: held-out gain (tuned - reference, POSITIVE logit) and KL.

    python bench/sweep.py --out runs/sweep lr6e-4:learning_rate=6e-4 lr1e-3:learning_rate=1e-3   # run, then table
    python bench/sweep.py --out runs/sweep --table                                               # table only
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/smollm2_sentiment.yaml"


def train(out: Path, name: str, overrides: list[str]) -> int:
    argv = [sys.executable, str(ROOT / "train_ppo.py"), "--config", str(CONFIG), "--output_dir", str(out / name),
            "--eval_steps", "6", "--eval_samples", "64", "--save_steps", "1000000", "--sample_every", "0",
            "--save_merged", "false"]
    for pair in overrides:
        key, value = pair.split("=", 1)
        argv += [f"--{key}", value]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(out / f"{name}.log", "w") as log:
        return subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def table(out: Path) -> str:
    runs = sorted(d for d in out.iterdir() if (d / "eval.json").exists())
    rows = {d.name: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
            for d in runs}
    references = {r["eval/reward_reference"] for rs in rows.values() for r in rs if "eval/reward_reference" in r}
    lines = ["| variant | held-out gain (64 prompts) at steps 6, 12, ... | KL at those steps | end (256 prompts): "
             "gain, share positive, VADER, KL | largest beta |", "|---|---|---|---|---|"]
    for d in runs:
        evals = [r for r in rows[d.name] if "eval/reward" in r]
        # the reference's held-out mean is the same for every run of one seed; rows from before it was logged take it
        # from the others
        reference = [r.get("eval/reward_reference", next(iter(references), float("nan"))) for r in evals]
        report = json.loads((d / "eval.json").read_text())
        gain = {s: report["after"][s]["mean"] - report["before"][s]["mean"] for s in report["scorers"]}
        reward = report["scorers"][0]
        lines.append(
            f"| {d.name} | " + ", ".join(f"{r['eval/reward'] - ref:+.2f}" for r, ref in zip(evals, reference))
            + " | " + ", ".join(f"{r['eval/kl']:.1f}" for r in evals)
            + f" | **{gain[reward]:+.3f}**, {gain.get('sentiment_positive', float('nan')) * 100:+.1f} pts, "
            f"{gain.get('vader', float('nan')):+.3f}, **{report['kl']:.2f}** | "
            f"{max(r['objective/kl_coef'] for r in rows[d.name]):.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help="NAME:key=value[,key=value...] (NAME: alone = the config as is)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/sweep")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs in --out")
    parser.add_argument("--parallel", type=int, default=2)
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    if not opts.table:
        jobs = [(v.split(":", 1)[0], [p for p in v.split(":", 1)[1].split(",") if p]) for v in opts.variants]
        with ThreadPoolExecutor(opts.parallel) as pool:
            codes = list(pool.map(lambda job: train(opts.out, *job), jobs))
        for (name, _), code in zip(jobs, codes):
            if code:
                print(f"{name}: exit {code}, see {opts.out / name}.log", file=sys.stderr)
    print(table(opts.out))


if __name__ == "__main__":
    main()
