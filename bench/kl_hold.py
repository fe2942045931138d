"""Does the KL controller hold its target? Runs a config for 1x, 2x and 3x its `steps` per seed and prints the
held-out reward gain and KL after each.

One run per seed: it trains to 1x `steps`, is evaluated on the held-out prompts, resumes (exactly: checkpoints
carry the RNG states, beta and TRL's counters) to 2x, is evaluated, and so on. Nothing in a run depends on
`steps` (the controller's horizon is in episodes), so the 1x and 2x evaluations are those of separate 1x and 2x
runs, at a third of the cost.

    python bench/kl_hold.py --config configs/smollm2_sentiment.yaml --seeds 0 1 2 [--out runs/kl_hold] [-- ARGS]

ARGS after `--` go to train_ppo.py for every run (e.g. `-- --init_kl_coef 0.2`). Each run's output directory keeps
eval-step-N.json next to metrics.jsonl; the table is also written to OUT/table.md.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trl.commands.cli_utils import TrlParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ppo_lm.metrics import read_metrics  # noqa: E402
from train_ppo import CheckedModelConfig, CheckedPPOConfig, ScriptArguments  # noqa: E402
from ppo_lm.validation import parse_config  # noqa: E402


def stage(config, seed, steps, out, extra, resume):
    argv = [sys.executable, str(ROOT / "train_ppo.py"), "--config", config, "--seed", str(seed), "--steps", str(steps),
            "--output_dir", str(out), *extra]
    argv += ["--resume_from_checkpoint", "latest"] if resume else ["--overwrite_output_dir"]
    start = time.time()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"run failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
    shutil.copy(out / "eval.json", out / f"eval-step-{steps}.json")
    return time.time() - start


def row(seed, steps, out, target):
    report = json.loads((out / f"eval-step-{steps}.json").read_text())
    reward, *judges = report["scorers"]
    gain = {s: report["after"][s]["mean"] - report["before"][s]["mean"] for s in report["scorers"]}
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] <= steps]
    last = rows[-5:]
    return {"seed": seed, "steps": steps, "reward_before": report["before"][reward]["mean"],
            "reward_after": report["after"][reward]["mean"], "reward_gain": gain[reward],
            **{f"{j}_gain": gain[j] for j in judges}, "heldout_kl": report["kl"],
            "kl_over_target": report["kl"] / target,
            "train_kl_last5": sum(r["objective/kl"] for r in last) / len(last),
            "beta_last": last[-1]["objective/kl_coef"], "beta_max": max(r["objective/kl_coef"] for r in rows)}


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smollm2_sentiment.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="runs/kl_hold")
    args = parser.parse_args(argv)
    if "--steps" in extra:
        parser.error("the runs take 1x, 2x, 3x the config's steps: set steps in the config, not after --")
    # the run's own settings, parsed (and checked) as train_ppo.py parses them: config file, then ARGS
    _, config, _ = parse_config(TrlParser((ScriptArguments, CheckedPPOConfig, CheckedModelConfig)),
                                ["--config", args.config, *extra])
    base, target = config.steps, config.target
    table = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed-{seed}"
        for i, multiple in enumerate(args.multiples):
            steps = base * multiple
            if not (out / f"eval-step-{steps}.json").exists():
                seconds = stage(args.config, seed, steps, out, extra, resume=i > 0)
                print(f"seed {seed}: {steps} steps done in {seconds:.0f} s", file=sys.stderr, flush=True)
            table.append(row(seed, steps, out, target))
            r = table[-1]
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:+.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
              for r in table]
    held = sum(0.5 <= r["kl_over_target"] <= 1.25 for r in table)
    lines.append(f"\nheld-out KL within [0.5, 1.25] x target ({target:g}): {held} of {len(table)} runs")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
