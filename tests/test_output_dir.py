"""output_dir is checked before anything is loaded or written: not empty, not a directory the run reads from (nor
inside one, nor holding one), and not a directory of files no run of this script wrote. Each refusal is one line,
exit 2, and the directory is byte-identical afterwards."""

import os
import shutil
import subprocess

import pytest
from transformers import AutoModelForCausalLM

import train_ppo
from conftest import REWARDS, run_script, snapshot
from ppo_lm.errors import RunError

# (id, the output_dir, other settings, start of the expected message). {tmp} is the test's scratch directory, which
# holds copies of the tiny policy (model/), classifier (classifier/) and dataset (data/reviews.jsonl), eval prompts
# (data/held_out.txt), a second copy of the dataset (train/reviews.jsonl) and a reward file (rewards/mine.py).
CASES = [
    ("empty", "", [], "output_dir is empty: set --output_dir to a new directory"),
    ("blank", "  ", [], "output_dir is empty"),
    ("the-policy", "{tmp}/model", [], "output_dir '{tmp}/model' is the directory of model_name_or_path '{tmp}/model'"),
    ("the-policy-overwrite", "{tmp}/model", ["--overwrite_output_dir"],
     "output_dir '{tmp}/model' is the directory of model_name_or_path"),
    ("inside-the-policy", "{tmp}/model/run", [],
     "output_dir '{tmp}/model/run' is inside the directory of model_name_or_path '{tmp}/model'"),
    ("holds-the-policy", "{tmp}", [], "output_dir '{tmp}' contains model_name_or_path '{tmp}/model'"),
    ("the-reference", "{tmp}/classifier", ["--ref_model_name_or_path", "{tmp}/classifier"],
     "output_dir '{tmp}/classifier' is the directory of ref_model_name_or_path"),
    ("the-reward-model", "{tmp}/classifier",
     ["--reward_fn", "sentiment_classifier", "--reward_kwargs", '{{"model": "{tmp}/classifier"}}'],
     "output_dir '{tmp}/classifier' is the directory of reward_kwargs model '{tmp}/classifier'"),
    ("the-data", "{tmp}/data", [], "output_dir '{tmp}/data' is the directory of dataset_name '{tmp}/data/reviews.jsonl'"),
    ("the-eval-file", "{tmp}/data", ["--dataset_name", "{tmp}/train/reviews.jsonl"],
     "output_dir '{tmp}/data' is the directory of eval_file '{tmp}/data/held_out.txt'"),
    ("the-reward-file", "{tmp}/rewards", ["--reward_fn", "{tmp}/rewards/mine.py:shout"],
     "output_dir '{tmp}/rewards' is the directory of reward_fn '{tmp}/rewards/mine.py'"),
    ("the-judge-file", "{tmp}/rewards", ["--eval_reward_fns", "{tmp}/rewards/mine.py:shout"],
     "output_dir '{tmp}/rewards' is the directory of eval_reward_fns '{tmp}/rewards/mine.py'"),
    ("foreign-files", "{tmp}/notes", [], "output_dir '{tmp}/notes' holds files no run of this script wrote (a.txt, b.txt"),
    ("foreign-files-overwrite", "{tmp}/notes", ["--overwrite_output_dir"],
     "output_dir '{tmp}/notes' holds files no run of this script wrote"),
]


@pytest.fixture
def scratch(tiny, tmp_path):
    shutil.copytree(tiny["policy"], tmp_path / "model")
    shutil.copytree(tiny["classifier"], tmp_path / "classifier")
    for data in ("data", "train"):
        (tmp_path / data).mkdir()
        shutil.copy(tiny["data"], tmp_path / data / "reviews.jsonl")
    (tmp_path / "data" / "held_out.txt").write_text("The film was\nThe plot\n")
    (tmp_path / "rewards").mkdir()
    shutil.copy(REWARDS, tmp_path / "rewards" / "mine.py")
    (tmp_path / "notes").mkdir()
    for name in ("a.txt", "b.txt", "config.json", "model.safetensors"):  # the last two are names a run writes
        (tmp_path / "notes" / name).write_text("mine")
    return tmp_path


def argv_for(scratch, output_dir: str, extra: list[str]) -> list[str]:
    fill = lambda s: s.format(tmp=scratch)  # noqa: E731
    return ["--model_name_or_path", str(scratch / "model"), "--dataset_name", str(scratch / "data" / "reviews.jsonl"),
            "--eval_file", str(scratch / "data" / "held_out.txt"), "--min_text_length", "20", "--reward_fn", "vader",
            "--batch_size", "16", "--mini_batch_size", "8", "--steps", "1", "--sample_every", "0",
            "--output_dir", fill(output_dir), *map(fill, extra)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_output_dir_the_run_must_not_use_is_refused_and_nothing_changes(case, scratch):
    _, output_dir, extra, message = case
    before = snapshot(scratch)
    with pytest.raises(RunError) as e:
        train_ppo.main(argv_for(scratch, output_dir, extra))
    assert e.value.code == 2
    assert str(e.value).startswith(message.format(tmp=scratch)), str(e.value)
    assert "\n" not in str(e.value)
    assert snapshot(scratch) == before


def test_the_policy_as_output_dir_as_a_user_sees_it(scratch):
    """The mistake of issue 30 as a user makes it: the policy's own directory as output_dir. Before, the run trained
    and saved the tuned policy over the base model, exit 0."""
    before = snapshot(scratch / "model")
    result = run_script(*argv_for(scratch, "{tmp}/model", []), timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: output_dir '{scratch}/model' is the directory of model_name_or_path")
    assert "Traceback" not in result.stderr
    assert snapshot(scratch / "model") == before


def test_a_run_directory_with_the_users_notes_is_still_a_run(scratch):
    """An earlier run's directory (it has run_config.yaml) where the user added a file is not refused as foreign:
    --overwrite_output_dir replaces the run and keeps the user's file (tests/test_faults.py checks the rest)."""
    out = scratch / "run"
    out.mkdir()
    (out / "run_config.yaml").write_text("steps: 1\n")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    result = run_script(*argv_for(scratch, "{tmp}/run", ["--overwrite_output_dir"]), timeout=180)
    assert result.returncode == 0, result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "model.safetensors").is_file()


def test_an_empty_output_dir_that_cannot_be_written_is_refused(scratch):
    """An existing, empty directory this user cannot write to (immutable here, as the tests run as root and root
    writes anywhere else): one line at start-up."""
    out = scratch / "read_only"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0 or os.access(out, os.W_OK):
        pytest.skip("no way to make a directory unwritable here (chattr +i)")
    try:
        with pytest.raises(RunError) as e:
            train_ppo.main(argv_for(scratch, "{tmp}/read_only", []))
        assert str(e.value).startswith(f"output_dir '{out}' is not writable: choose a directory you can write to")
        assert e.value.code == 2 and not any(out.iterdir())
    finally:
        subprocess.run(["chattr", "-i", str(out)])


def test_overwrite_removes_sharded_weights_and_keeps_the_users_files(copy_of_finished, faults, tiny):
    out, _ = copy_of_finished
    AutoModelForCausalLM.from_pretrained(tiny["policy"]).save_pretrained(out, max_shard_size="40KB")
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "model-notes.txt").write_text("mine too")

    result = run_script("--config", faults(steps=1), "--overwrite_output_dir")
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert not set(shards) & names and "model.safetensors.index.json" not in names
    assert {"notes.txt", "model-notes.txt", "model.safetensors", "checkpoint-1"} <= names
    assert "checkpoint-2" not in names  # the earlier run's
    assert not (out / ".replaced-run").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2
