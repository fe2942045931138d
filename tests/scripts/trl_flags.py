"""python tests/scripts/trl_flags.py [--shim]: prints trl 0.11.4's optional-package flags, as JSON, next to whether
each package is installed, with or without ppo_lm.compat's shim; then imports trl's judges module."""

import importlib.util
import json
import sys
from pathlib import Path

import trl.import_utils as flags

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if "--shim" in sys.argv:
    from ppo_lm.compat import trl_package_flags

    trl_package_flags()
packages = {"diffusers": flags.is_diffusers_available(), "llm_blender": flags.is_llmblender_available(),
            "unsloth": flags.is_unsloth_available(), "liger_kernel": flags.is_liger_kernel_available(),
            "rich": flags.is_rich_available()}
print(json.dumps({name: [repr(flag), importlib.util.find_spec(name) is not None] for name, flag in packages.items()}))
import trl.trainer.judges  # noqa: E402,F401  (imports llm_blender when its flag says it is installed)

print("judges imported")
