#!/usr/bin/env python
"""Draw OUTPUT_DIR/training_curves.png from OUTPUT_DIR/metrics.jsonl: reward (mean +- std), KL with its target, and
the KL coefficient beta, per PPO step, with the held-out evaluations (eval_steps) as points. Works on finished and
interrupted runs. With held-out evaluations it also draws the reward-KL frontier: held-out reward against held-out
KL, one line of points per run, runs side by side (reward_kl_frontier.png, or --frontier PATH).

    python plot.py runs/smollm2_sentiment
    python plot.py runs/target3 runs/target6 runs/target9 --frontier frontier.png
"""

import argparse

from ppo_lm.plots import plot_frontier, plot_run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="train_ppo.py output directories")
    parser.add_argument("--frontier", default="reward_kl_frontier.png", help="where the frontier figure goes")
    options = parser.parse_args()
    for run_dir in options.run_dirs:
        print(plot_run(run_dir))
    frontier = plot_frontier(options.run_dirs, options.frontier)
    if frontier:
        print(frontier)
