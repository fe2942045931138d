"""ppo_lm/compat.py: each shim for trl 0.11.4 on transformers 5, with a test that fails without it; and importing the
project's modules changes no environment variable and no warnings filter."""

import json
import subprocess
import sys
import warnings

import torch

from conftest import ROOT
from ppo_lm.models import load_model

SCRIPTS = ROOT / "tests" / "scripts"


def run_python(script: str, *argv) -> subprocess.CompletedProcess:
    """A fresh interpreter (trl's flags are module state)."""
    return subprocess.run([sys.executable, str(SCRIPTS / script), *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_trl_package_flags_say_what_is_installed():
    """transformers 5's _is_package_available returns a tuple, so trl's flags all say "installed" and trl's judges
    module (which imports llm_blender when its flag says so) fails to import; with the shim each flag is the bool of
    whether its package is installed, and the judges module imports."""
    unshimmed = run_python("trl_flags.py")
    flags = json.loads(unshimmed.stdout.splitlines()[0])
    assert flags["llm_blender"] == ["(False, None)", False]  # the lie the shim is for (llm_blender not installed)
    assert unshimmed.returncode != 0 and "No module named 'llm_blender'" in unshimmed.stderr

    shimmed = run_python("trl_flags.py", "--shim")
    assert shimmed.returncode == 0, shimmed.stderr
    flags, imported = shimmed.stdout.splitlines()
    assert all(flag == repr(installed) for flag, installed in json.loads(flags).values()), flags
    assert imported == "judges imported"


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


def test_importing_the_project_has_no_side_effects():
    """train_ppo.py, reward.py, plot.py and every ppo_lm module, imported after the libraries (numpy, torch,
    deepspeed and peft set filters and variables of their own): no environment variable, no warnings filter."""
    result = run_python("import_side_effects.py")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert "train_ppo" in report["modules"] and "ppo_lm.launch" in report["modules"]
    assert report["environment"] == [] and report["filters"] == []
