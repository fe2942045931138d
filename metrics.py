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
