"""Prints, as JSON, the environment variables and warnings filters that importing the project's modules changes.
The libraries are imported first: numpy, torch, deepspeed and peft add filters or variables of their own."""

import importlib
import json
import os
import pkgutil
import sys
import warnings
from pathlib import Path

import accelerate  # noqa: F401
import datasets  # noqa: F401
import deepspeed  # noqa: F401
import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
import trl  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
environment, filters = dict(os.environ), list(warnings.filters)
import ppo_lm  # noqa: E402

modules = ["train_ppo", "reward", "plot", *[f"ppo_lm.{m.name}" for m in pkgutil.iter_modules(ppo_lm.__path__)]]
for name in modules:
    importlib.import_module(name)
changed = sorted(k for k in set(os.environ) | set(environment) if os.environ.get(k) != environment.get(k))
print(json.dumps({"modules": modules, "environment": changed,
                  "filters": [str(f) for f in warnings.filters if f not in filters]}))
