#!/usr/bin/env python
"""Draw OUTPUT_DIR/training_curves.png from OUTPUT_DIR/metrics.jsonl: reward (mean +- std), KL with its
target, and the KL coefficient beta, per PPO step. Works on finished and interrupted runs.

    python plot.py runs/smollm2_vader
"""

import sys
from pathlib import Path

import yaml

from ppo_lm.metrics import read_metrics


def plot_run(run_dir) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        raise SystemExit(f"error: no metrics in {run_dir / 'metrics.jsonl'}; is this a train_ppo.py output_dir?")
    config_path = run_dir / "run_config.yaml"
    target = yaml.safe_load(config_path.read_text()).get("target") if config_path.exists() else None
    steps = [r["step"] for r in rows]
    column = lambda key: [r[key] for r in rows]  # noqa: E731

    fig, (ax_reward, ax_kl, ax_beta) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    mean, std = column("env/reward_mean"), column("env/reward_std")
    ax_reward.plot(steps, mean, label="mean reward")
    ax_reward.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                           alpha=0.25, label="± std")
    ax_reward.set_ylabel("reward (score)")
    ax_reward.legend(loc="lower right")
    ax_kl.plot(steps, column("objective/kl"), color="tab:red", label="KL(policy || reference)")
    if target is not None:
        ax_kl.axhline(target, color="gray", linestyle="--", label=f"KL target ({target:g})")
    ax_kl.set_ylabel("KL (nats / response)")
    ax_kl.legend(loc="upper left")
    ax_beta.plot(steps, column("objective/kl_coef"), color="tab:green")
    ax_beta.set_ylabel("beta (KL coefficient)")
    ax_beta.set_xlabel("PPO step")
    fig.suptitle(f"PPO training curves — {run_dir.name}")
    fig.tight_layout()
    path = run_dir / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(plot_run(sys.argv[1]))
