"""Tiny local models and data, built once per test session; nothing is downloaded."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
# pytest -n N (make test): the workers share the cores, so torch threads per process (the scripts a test starts
# inherit it) that add up to the cores, or they spin against each other's
workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
ROOT = Path(__file__).resolve().parents[1]
REWARDS = ROOT / "tests" / "rewards.py"  # the tests' reward functions: f"{REWARDS}:words"
sys.path.insert(0, str(ROOT))

from ppo_lm.tiny_models import (build_chat_policy, build_classifier, build_policy, write_dataset,  # noqa: E402
                                write_instructions)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of a tiny GPT-2 policy, a tiny DistilBERT classifier and a 256-text dataset."""
    root = tmp_path_factory.mktemp("tiny")
    return {"policy": str(build_policy(root / "policy")), "classifier": str(build_classifier(root / "classifier")),
            "data": str(write_dataset(root / "reviews.jsonl"))}


@pytest.fixture(scope="session")
def tiny_chat(tiny, tmp_path_factory):
    """The tiny policy with a chat template, and instruction datasets (prompt, messages, keyword, max_words, row):
    64 rows to train on, 8 held out."""
    root = tmp_path_factory.mktemp("tiny_chat")
    return {"policy": str(build_chat_policy(Path(tiny["policy"]), root / "chat_policy")),
            "data": str(write_instructions(root / "instructions.jsonl")),
            "held_out": str(write_instructions(root / "held_out.jsonl", n=8, seed=1))}


@pytest.fixture
def chat_settings(tiny_chat):
    """tiny_config's overrides for a whole-prompt run on the instructions, in the chat template."""
    return {"model_name_or_path": tiny_chat["policy"], "dataset_name": tiny_chat["data"], "prompt_column": "messages",
            "system_prompt": "Be brief.", "prompt_max_tokens": 64, "response_max_tokens": 12, "stop_strings": ["."]}


@pytest.fixture
def tiny_config(tiny, tmp_path):
    """Write a small-run YAML config (overrides as keyword arguments) and return its path."""

    def write(**overrides) -> Path:
        settings = {"model_name_or_path": tiny["policy"], "dataset_name": tiny["data"], "min_text_length": 20,
                    "reward_fn": "sentiment_classifier", "reward_kwargs": {"model": tiny["classifier"]},
                    "batch_size": 16, "mini_batch_size": 8, "steps": 3, "output_dir": str(tmp_path / "run"),
                    "sample_every": 0, "save_steps": 2, **overrides}
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    write.policy = tiny["policy"]
    return write


# A faked machine with a GPU (tests/gpu_machine/sitecustomize.py): torch reports one and fails on the first use of it
GPU_MACHINE = {"AS_ON_A_GPU_MACHINE": "1", "PYTHONPATH": str(ROOT / "tests/gpu_machine")}


def run_script(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """python train_ppo.py ARGS, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train_ppo.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def snapshot(out: Path) -> dict:
    """Every file of an output directory with its bytes, to check that nothing in it changed."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, *args, env: dict | None = None) -> list[subprocess.Popen]:
    """python train_ppo.py ARGS as n processes of one CPU run, started the way torchrun starts them (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT), so each process's exit code and stderr can be read on its own."""
    port = free_port()
    procs = []
    for rank in range(n):
        process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                       "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), **(env or {})}
        process_env = {k: v for k, v in process_env.items() if v is not None}  # env: None removes a variable
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train_ppo.py"), *map(str, args)], cwd=ROOT,
                                      env=process_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def run_launched(n: int, config, *argv, env: dict | None = None, on_start=None, timeout=240):
    """`launch` n processes with --config and argv, wait for all (on_start(procs) first); (exit codes, stderrs). A
    process that hangs ends them all, and the test fails showing what each said."""
    import time

    procs = launch(n, "--config", config, *argv, env=env)
    if on_start:
        on_start(procs)
    deadline = time.time() + timeout
    try:
        outputs = [p.communicate(timeout=max(1, deadline - time.time())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {n} processes did not end within {timeout} s; stderr of each: "
                    f"{[p.communicate()[1] for p in procs]}")
    return [p.returncode for p in procs], [err for _, err in outputs]


def sigterm_to_rank_1_after(rows: int, out: Path):
    """An on_start for run_launched: SIGTERM to rank 1 once OUT/metrics.jsonl has `rows` rows."""
    import signal
    import time

    from ppo_lm.metrics import read_metrics

    def terminate(procs):
        deadline = time.time() + 120
        while len(read_metrics(out / "metrics.jsonl")) < rows and time.time() < deadline:
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)

    return terminate


# Faults at an exact point of a run: tests/rewards.py's fault functions, which the run imports as its reward

@pytest.fixture
def faults(tiny_config, tmp_path):
    """config(fault, at=call, **settings) -> a config whose reward is tests/rewards.py:`fault`."""

    def config(fault="words", at=0, **settings):  # the fault's own arguments (signum, name, rank) among settings
        for calls in tmp_path.glob("calls-*"):
            calls.unlink()
        arguments = {k: settings.pop(k) for k in ("signum", "name", "rank") if k in settings}
        return tiny_config(reward_fn=f"{REWARDS}:{fault}",
                           reward_kwargs={"out": str(tmp_path), "at": at, **arguments}, **settings)

    return config


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished 2-step run with checkpoint-1 and checkpoint-2 (save_steps 1), copied into each test's output_dir."""
    root = tmp_path_factory.mktemp("finished")
    config = root / "finished.yaml"
    config.write_text(json.dumps({"model_name_or_path": tiny["policy"], "dataset_name": tiny["data"],
                                  "min_text_length": 20, "reward_fn": "vader", "batch_size": 16,
                                  "mini_batch_size": 8, "steps": 2, "save_steps": 1, "sample_every": 0,
                                  "output_dir": str(root / "run")}))
    assert run_script("--config", config).returncode == 0
    return root / "run"


@pytest.fixture
def copy_of_finished(finished, tiny_config, tmp_path):
    """(output_dir, config): the finished run in this test's output_dir, and a config that resumes it to step 3."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run", tiny_config(reward_fn="vader", steps=3)


ROWS = ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "ppo/loss/total",
        "ppo/policy/approxkl", "tokens/responses_len_mean"]


def assert_same_rows(resumed, uninterrupted, after_step):
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    for a, b in zip(resumed[after_step:], uninterrupted[after_step:]):
        for key in ROWS:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
