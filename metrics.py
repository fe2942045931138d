"""Metrics: one JSON object per PPO step in OUTPUT_DIR/metrics.jsonl."""

import json
import numbers
from pathlib import Path

from trl.core import convert_to_scalar


def scalar_stats(stats: dict) -> dict:
    """The single-number entries of TRL's step statistics (objective/kl, objective/kl_coef — the beta this step
    used —, ppo/loss/*, ...), as plain floats; histograms are left out."""
    return {k: float(v) for k, v in convert_to_scalar(stats).items() if isinstance(v, numbers.Real)}


def read_metrics(path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_metrics(path, last_step: int) -> None:
    """On resume, drop rows written after the checkpoint, so step numbers continue without duplicates."""
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = Path(f"{path}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def log_to_trackers(accelerator, row: dict, samples: dict | None = None) -> None:
    """The metrics row (the same figures as metrics.jsonl) to log_with's tracker at the row's step, and a table of
    samples (columns -> values) as text for tensorboard or a table for wandb. Main process only, as accelerate logs."""
    step = row["step"]
    accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
    for tracker in accelerator.trackers:  # accelerate creates them on the main process only
        if samples and tracker.name == "tensorboard":
            header = "| " + " | ".join(samples) + " |\n|" + "---|" * len(samples) + "\n"
            rows = ["| " + " | ".join(f"{c:+.3f}" if isinstance(c, float) else str(c).replace("|", "\\|")
                                      .replace("\n", " ") for c in cells) + " |" for cells in zip(*samples.values())]
            tracker.writer.add_text("samples", header + "\n".join(rows), step)
        elif samples and tracker.name == "wandb":
            import wandb

            tracker.log({"samples": wandb.Table(columns=list(samples), data=[list(r) for r in zip(*samples.values())])},
                        step=step)
        if tracker.name == "tensorboard":
            tracker.writer.flush()  # a killed run keeps every step it logged
