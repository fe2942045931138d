"""Metrics: one JSON object per PPO step in OUTPUT_DIR/metrics.jsonl, the same figures to the trackers, and tables
of samples."""

import json
import numbers
import sys
import threading
from pathlib import Path

import torch
from trl.core import convert_to_scalar

from ppo_lm.errors import RunError, write_error, writing
from ppo_lm.processes import fail_together


def scalar_stats(stats: dict) -> dict:
    """The single-number entries of TRL's step statistics (objective/kl, objective/kl_coef — the beta this step
    used —, ppo/loss/*, ...), as plain floats; histograms are left out."""
    return {k: float(v) for k, v in convert_to_scalar(stats).items() if isinstance(v, numbers.Real)}


def step_row(accelerator, step: int, scores: list[float], parts: dict[str, list[float]], stats: dict, skipped: int,
             seconds: dict) -> dict:
    """The step's metrics row: the scores gathered from every process (env/..., and each reward function's mean,
    env/reward/NAME), TRL's statistics, the minibatches TRL skipped, the seconds of each phase (time/...) and, on a
    GPU, the step's peak memory (memory that grows from step to step is a leak). One gather for all of them."""
    columns = torch.tensor([scores, *parts.values()], device=accelerator.device).T  # (episodes, 1 + functions)
    gathered = accelerator.gather(columns).float()
    all_scores = gathered[:, 0]
    row = {"step": step, "env/episodes": len(all_scores), "env/reward_mean": all_scores.mean().item(),
           "env/reward_std": all_scores.std().item(),
           **{f"env/reward/{name}": gathered[:, i].mean().item() for i, name in enumerate(parts, 1)},
           **scalar_stats(stats), "ppo/skipped_minibatches": skipped,
           **{f"time/{phase}": s for phase, s in seconds.items()}}
    if torch.cuda.is_available():
        row["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return row


def log_step(accelerator, row: dict, samples: dict | None, path: Path, stop_signals: list, progress, beta: float
             ) -> int:
    """The row to metrics.jsonl, the trackers and the progress bar, and the samples table when given, on the main
    process. Returns the stop signal any process has received so far (0 for none), the same on every process: the
    one gather of this phase also ends every process with one line when a write failed (a full disk)."""
    with fail_together(accelerator.state, stop_signals) as logged:
        if accelerator.trackers:
            log_to_trackers(accelerator, row, samples, path.parent)
        if accelerator.is_main_process:
            append_row(path, row)
            progress.set_postfix(reward=f"{row['env/reward_mean']:.3f}", kl=f"{row['objective/kl']:.2f}",
                                 beta=f"{beta:.3f}")
            if samples:
                print_table(f"samples at step {row['step']}", list(samples), *samples.values())
    return logged.stop_signal


def read_metrics(path, torn: list | None = None) -> list[dict]:
    """The rows of metrics.jsonl. A torn last line (a kill -9 or a full disk during its write) is left out, and
    appended to `torn` when given; a damaged line before it is an error that names the line."""
    path = Path(path)
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise RunError(f"{path} line {number} is not a JSON row (the file was edited or damaged): remove or "
                               "fix that line") from None
            if torn is not None:
                torn.append(line)
    return rows


def append_row(path, row: dict) -> None:
    """One row at the end of metrics.jsonl; a failed write (a full disk) ends the run in one line, and a resume drops
    the torn line it may leave."""
    with writing(f"step {row['step']}'s metrics", path, Path(path).parent), Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path, last_step: int) -> None:
    """On resume, drop rows written after the checkpoint, so step numbers continue without duplicates, and a torn
    last line (a kill -9 or a full disk while it was written), with a note."""
    torn = []
    rows = read_metrics(path, torn)
    if torn:
        print(f"note: dropped the torn last line of {path} (the run ended while writing it: a kill, a full disk)",
              file=sys.stderr)
    rows = [r for r in rows if r["step"] <= last_step]
    tmp = Path(f"{path}.tmp")
    with writing("the resumed run's metrics", tmp, Path(path).parent, code=2, then="resume again"):
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)


def log_to_trackers(accelerator, row: dict, samples: dict | None, output_dir) -> None:
    """The metrics row (the same figures as metrics.jsonl) to log_with's tracker at the row's step, and a table of
    samples (columns -> values) as text for tensorboard or a table for wandb. Main process only, as accelerate logs.
    A failed write of the logs (a full disk) ends the run in one line."""
    step = row["step"]
    with writing(f"step {step}'s tracker logs", accelerator.logging_dir or output_dir, output_dir):
        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
        for tracker in accelerator.trackers:  # accelerate creates them on the main process only
            if samples and tracker.name == "tensorboard":
                header = "| " + " | ".join(samples) + " |\n|" + "---|" * len(samples) + "\n"
                rows = ["| " + " | ".join(f"{c:+.3f}" if isinstance(c, float) else str(c).replace("|", "\\|")
                                          .replace("\n", " ") for c in cells) + " |"
                        for cells in zip(*samples.values())]
                tracker.writer.add_text("samples", header + "\n".join(rows), step)
            elif samples and tracker.name == "wandb":
                import wandb

                table = wandb.Table(columns=list(samples), data=[list(r) for r in zip(*samples.values())])
                tracker.log({"samples": table}, step=step)
            if tracker.name == "tensorboard":
                tracker.writer.flush()  # a killed run keeps every step it logged


def quiet_tracker_threads() -> None:
    """tensorboard writes its event file on a thread of its own; a failed write there (a full disk) is printed as
    that thread's traceback, then raised again on the main thread at the next log (log_to_trackers says it in one
    line). So that thread's write errors are not printed; anything else is, as Python does."""
    default = threading.excepthook

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and write_error(args.exc_value):
            return
        default(args)

    threading.excepthook = hook


def print_table(title: str, columns: list[str], *cells, n: int = 4) -> None:
    """A rich table of the first n samples on stderr; float cells shown as rewards."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    for column in columns:
        table.add_column(column)
    for row in list(zip(*cells))[:n]:
        table.add_row(*[f"{c:+.3f}" if isinstance(c, float) else c for c in row])
    Console(stderr=True).print(table)
