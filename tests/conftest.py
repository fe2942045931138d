"""Tiny local models and data, built once per test session; nothing is downloaded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from local_models import build_classifier, build_policy, write_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of a tiny GPT-2 policy, a tiny DistilBERT classifier and a 256-text dataset."""
    root = tmp_path_factory.mktemp("tiny")
    return {"policy": str(build_policy(root / "policy")), "classifier": str(build_classifier(root / "classifier")),
            "data": str(write_dataset(root / "reviews.jsonl"))}


@pytest.fixture
def tiny_config(tiny, tmp_path):
    """Write a small-run YAML config (overrides as keyword arguments) and return its path."""

    def write(**overrides) -> Path:
        settings = {"model_name_or_path": tiny["policy"], "dataset_name": tiny["data"], "min_text_length": 20,
                    "reward_fn": "sentiment_classifier", "reward_kwargs": {"model": tiny["classifier"]},
                    "batch_size": 16, "mini_batch_size": 8, "steps": 3, "output_dir": str(tmp_path / "run"),
                    "sample_every": 0, "save_every": 2, **overrides}
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    return write


def run_script(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """python train_ppo.py ARGS, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train_ppo.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
