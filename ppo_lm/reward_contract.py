"""The reward contract: find the reward function, call it, and check it returned one finite float per response."""

import importlib.util
import math
import numbers
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from trl.trainer.utils import RunningMoments

from ppo_lm.errors import RunError


def load_reward_fn(spec: str, setting: str = "reward_fn", functions: ModuleType | None = None):
    """`name` of a function in the module `functions` (train_ppo.py passes reward.py), or `path/to/file.py:function`;
    errors name `setting`."""
    if ":" in spec:
        path, name = spec.rsplit(":", 1)
        if not os.path.isfile(path):
            raise RunError(f"{setting} '{spec}': file '{path}' not found; use path/to/file.py:function")
        if not path.endswith(".py"):
            raise RunError(f"{setting} '{spec}': '{path}' is not a Python file; use path/to/file.py:function")
        module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise RunError(f"{setting} '{spec}': importing '{path}' failed: {type(e).__name__}: {e}") from None
    else:
        if functions is None:
            raise RunError(f"{setting} '{spec}': name a function as path/to/file.py:function")
        module, name = functions, spec
    fn = getattr(module, name, None)
    if not callable(fn):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
        raise RunError(f"{setting} '{spec}': no function '{name}' in {module.__file__}; available: {available}")
    return fn


def compute_rewards(fn, prompts: list[str], responses: list[str], kwargs: dict) -> list[float]:
    """Call a reward function and enforce its contract: one finite number per response."""
    name = getattr(fn, "__name__", str(fn))
    try:
        scores = fn(prompts, responses, **kwargs)
    except Exception as e:
        # find the first sample it fails on, so the message can show it
        for i, (p, r) in enumerate(zip(prompts, responses)):
            try:
                fn([p], [r], **kwargs)
            except Exception:
                raise RunError(
                    f"reward function '{name}' raised {type(e).__name__}: {e} — on sample {i}: "
                    f"prompt={p!r} response={r!r}"
                ) from None
        raise RunError(f"reward function '{name}' raised {type(e).__name__}: {e} on the batch") from None
    if isinstance(scores, torch.Tensor | np.ndarray):
        scores = scores.tolist()
    if not isinstance(scores, list | tuple) or len(scores) != len(responses):
        got = f"{len(scores)} values" if hasattr(scores, "__len__") else type(scores).__name__
        raise RunError(f"reward function '{name}' returned {got} for {len(responses)} responses; "
                       "it must return one float per response")
    for i, s in enumerate(scores):
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            s = s.item()
        if not isinstance(s, numbers.Real) or isinstance(s, bool):
            raise RunError(f"reward function '{name}' returned a non-number at index {i}: {s!r}")
        if not math.isfinite(s):
            raise RunError(f"reward function '{name}' returned {s} at index {i} (response {responses[i]!r}); "
                           "rewards must be finite")
    return [float(s) for s in scores]


class WeightedRewards:
    """The training reward: one or several reward functions, the score their weighted sum (reward_fn, reward_weights).
    Each function is called under the contract, so an error names it; `parts` keeps each one's own scores, which are
    logged (env/reward/NAME) and reported (weight 0: logged only). One function of weight 1 scores exactly as itself."""

    def __init__(self, fns: dict, weights: list[float]):
        self.fns, self.weights = fns, dict(zip(fns, weights))
        names = list(fns)
        self.__name__ = names[0] if len(names) == 1 and weights[0] == 1.0 else " + ".join(
            f"{w:g} x {name}" for name, w in self.weights.items())

    def parts(self, prompts: list[str], responses: list[str], kwargs: dict) -> dict[str, list[float]]:
        return {name: compute_rewards(fn, prompts, responses, kwargs) for name, fn in self.fns.items()}

    def total(self, parts: dict[str, list[float]]) -> list[float]:
        return [sum(self.weights[name] * score for name, score in zip(parts, scores)) for scores in zip(*parts.values())]

    def __call__(self, prompts, responses, **kwargs) -> list[float]:
        return self.total(self.parts(prompts, responses, kwargs))


class ScoreMoments(RunningMoments):
    """TRL's running score moments for use_score_scaling, kept as tensors. trl 0.11.4's RunningMoments.update stores
    them as floats, and PPOTrainer.step then calls .to() on them, so use_score_scaling fails at its first step."""

    def update(self, xs: torch.Tensor):
        moments = super().update(xs)
        self.mean, self.std = torch.tensor(self.mean), torch.tensor(self.std)
        return moments
