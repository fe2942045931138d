"""Shims that keep trl 0.11.4 (the last release with PPOTrainer.generate/step and adaptive KL) working on today's
transformers 5, peft and huggingface_hub. Each is as small as it can be, applied where the script asks for it
(nothing happens on import), and has a test in tests/test_compat.py that fails without it.

1. trl's optional-package flags (`trl_package_flags`). trl 0.11.4 computes `is_diffusers_available()`,
   `is_llmblender_available()`, ... with `transformers.utils.import_utils._is_package_available(name)`, which
   returned a bool and in transformers 5 returns a tuple `(found, version)`: always truthy, so every flag says
   "installed". `import trl.trainer.judges` (trl's PairRM and LLM judges, which a reward function may use) then
   imports `llm_blender` unconditionally and fails. The shim recomputes the flags with `importlib.util.find_spec`.
   Upstream: transformers changed the helper in 5.0; other projects hit it (Soup 503, LlamaFactory 10446).
2. The value head's cache argument (`drop_none_cache_argument`). trl's
   `AutoModelForCausalLMWithValueHead.forward` always passes `past_key_values=None` to the wrapped model, which
   transformers 5 deprecates in favour of `cache` (a FutureWarning on every forward; the argument goes in 5.40).
   PPO never passes a cache, so the shim drops the argument when it is None, before the wrapped model sees it
   (a forward pre-hook, no change to trl's code). Numerics are unchanged: None was the default.

Checked and needing no shim (read from the sources and run in the suite):
- trl's 8/4-bit detection reads `load_in_8bit` / `load_in_4bit`, which transformers 5 replaced by
  `quantization_config`; this script refuses those settings (validation.UNUSED_FIELDS), so the path is never taken.
- `tokenizer.apply_chat_template` returns a `BatchEncoding` in transformers 5; trl 0.11.4's PPO path never calls it.
- DeepSpeed's `_register_hooks_recursively` rename: DeepSpeed 0.19 aliases the old name itself.
"""

import importlib.util

# trl.import_utils' module-level flags and the package each one is about
TRL_FLAGS = {"_diffusers_available": "diffusers", "_unsloth_available": "unsloth", "_rich_available": "rich",
             "_liger_kernel_available": "liger_kernel", "_llmblender_available": "llm_blender"}


def trl_package_flags() -> None:
    """Shim 1: trl's is_*_available() flags say whether the package is installed (a bool), as in transformers 4."""
    import trl.import_utils

    for flag, package in TRL_FLAGS.items():
        if hasattr(trl.import_utils, flag):
            setattr(trl.import_utils, flag, importlib.util.find_spec(package) is not None)


def drop_none_cache_argument(value_head_model) -> None:
    """Shim 2: the wrapped model of a trl value-head model no longer receives past_key_values=None."""

    def hook(module, args, kwargs):
        if "past_key_values" in kwargs and kwargs["past_key_values"] is None:
            kwargs = {k: v for k, v in kwargs.items() if k != "past_key_values"}
        return args, kwargs

    value_head_model.pretrained_model.register_forward_pre_hook(hook, with_kwargs=True)
