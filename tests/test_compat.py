"""ppo_lm/compat.py: each shim for trl 0.11.4 on transformers 5, with a test that fails without it."""

import subprocess
import sys
import warnings

import torch

from conftest import ROOT
from ppo_lm.models import load_model


def run_python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (trl's flags are module state), from the project's root."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_trl_package_flags_say_what_is_installed():
    """transformers 5's _is_package_available returns a tuple, so trl's flags all say "installed"; after the shim
    they are bools that match the environment, and trl's judges module (which imports llm_blender when its flag says
    so) imports."""
    unshimmed = run_python("import trl.import_utils as u; print(u.is_llmblender_available())")
    shimmed = run_python(
        "import importlib.util, trl.import_utils as u\n"
        "from ppo_lm.compat import trl_package_flags\n"
        "trl_package_flags()\n"
        "flags = [u.is_diffusers_available(), u.is_llmblender_available(), u.is_unsloth_available(), "
        "u.is_liger_kernel_available(), u.is_rich_available()]\n"
        "assert flags == [importlib.util.find_spec(p) is not None for p in "
        "('diffusers', 'llm_blender', 'unsloth', 'liger_kernel', 'rich')], flags\n"
        "assert all(type(f) is bool for f in flags)\n"
        "import trl.trainer.judges\n"
        "print('judges imported')")
    assert unshimmed.returncode == 0, unshimmed.stderr
    assert shimmed.returncode == 0, shimmed.stderr
    assert shimmed.stdout.strip() == "judges imported"


def test_value_head_forward_passes_no_deprecated_cache_argument(tiny):
    """trl's value head passes past_key_values=None on every forward; transformers 5 warns (FutureWarning) and drops
    the argument in 5.40. With the shim (load_model applies it) no warning, and the same logits as the bare model."""
    from train_ppo import CheckedModelConfig

    policy = load_model(tiny["policy"], "policy", CheckedModelConfig(tiny["policy"]))
    ids = torch.tensor([[1, 2, 3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any FutureWarning fails the test
        logits, _, value = policy(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert value.shape == (1, 4)
    assert torch.equal(logits, policy.pretrained_model(input_ids=ids).logits)
