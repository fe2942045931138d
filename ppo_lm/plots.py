"""Training curves and the reward-KL frontier, drawn from metrics.jsonl; plot.py is their command line.

OUTPUT_DIR/training_curves.png: reward (mean +- std), KL with its target, and the KL coefficient beta, per PPO step,
with the held-out evaluations (eval_steps) as points; finished and interrupted runs alike. The reward-KL frontier:
held-out reward against held-out KL, one line of points per run, runs side by side."""

from pathlib import Path

import yaml

from ppo_lm.metrics import read_metrics


def load(run_dir: Path) -> tuple[list[dict], float | None]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        raise SystemExit(f"error: no metrics in {run_dir / 'metrics.jsonl'}; is this a train_ppo.py output_dir?")
    config_path = run_dir / "run_config.yaml"
    target = yaml.safe_load(config_path.read_text()).get("target") if config_path.exists() else None
    return rows, target


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir) -> Path:
    plt = pyplot()
    run_dir = Path(run_dir)
    rows, target = load(run_dir)
    steps = [r["step"] for r in rows]
    column = lambda key: [r[key] for r in rows]  # noqa: E731
    held_out = [r for r in rows if "eval/reward" in r]

    fig, (ax_reward, ax_kl, ax_beta) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    mean, std = column("env/reward_mean"), column("env/reward_std")
    ax_reward.plot(steps, mean, label="mean reward")
    ax_reward.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                           alpha=0.25, label="± std")
    ax_kl.plot(steps, column("objective/kl"), color="tab:red", label="KL(policy || reference)")
    if held_out:
        ax_reward.plot([r["step"] for r in held_out], [r["eval/reward"] for r in held_out], "o-", color="black",
                       label="held-out reward")
        ax_kl.plot([r["step"] for r in held_out], [r["eval/kl"] for r in held_out], "o-", color="black",
                   label="held-out KL")
    ax_reward.set_ylabel("reward (score)")
    ax_reward.legend(loc="lower right")
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


def plot_frontier(run_dirs: list, path) -> Path | None:
    """Held-out reward against held-out KL at every evaluation of each run (the figure RLHF papers compare methods
    with); None when no run has held-out evaluations."""
    runs = [(Path(d), *load(Path(d))) for d in run_dirs]
    runs = [(d, [r for r in rows if "eval/reward" in r], target) for d, rows, target in runs]
    if not any(held_out for _, held_out, _ in runs):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for run_dir, held_out, target in runs:
        if held_out:
            line, = ax.plot([r["eval/kl"] for r in held_out], [r["eval/reward"] for r in held_out], "o-",
                            label=f"{run_dir.name}" + (f" (target {target:g})" if target is not None else ""))
            ax.annotate(f"step {held_out[-1]['step']}", (held_out[-1]["eval/kl"], held_out[-1]["eval/reward"]),
                        fontsize=8, color=line.get_color())
    ax.set_xlabel("held-out KL(policy || reference), nats / response")
    ax.set_ylabel("held-out reward (training reward's mean)")
    ax.set_title("reward-KL frontier: held-out evaluations during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
