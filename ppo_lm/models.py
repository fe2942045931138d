"""Loading the models: the policy with its value head (fresh or saved LoRA adapters), the frozen reference and the
tokenizer, each failing with one sentence that names the setting."""

import os
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from trl import AutoModelForCausalLMWithValueHead, get_peft_config
from trl.trainer.utils import disable_dropout_in_model

from ppo_lm.compat import drop_none_cache_argument
from ppo_lm.errors import RunError, first_line


def from_pretrained(cls, path: str, what: str, **kwargs):
    """cls.from_pretrained from a local directory or the hub, failing with one sentence that names the setting."""
    if os.path.isfile(path):
        raise RunError(f"{what} '{path}' is a file: point it to the directory that holds the model's config.json")
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:  # OSError, ValueError, SafetensorError, ...: the library's first line says what is wrong
        if os.path.isdir(path):
            reason = first_line(e)
            raise RunError(f"{what} '{path}' could not be loaded ({reason}); point it to a complete saved model "
                           "directory (config.json, weights, tokenizer)") from None
        if path.startswith(("/", ".", "~")) or path.count("/") > 1:  # a path, not a hub id like org/name
            raise RunError(f"{what}: directory '{path}' not found; point it to a saved model directory") from None
        raise RunError(f"{what} '{path}' is not a local directory and could not be fetched from the Hugging Face "
                       f"Hub (offline or unreachable); on a connected machine run `hf download {path} "
                       f"--local-dir DIR` and set {what} to DIR, or run `make train` for the offline "
                       f"SmolLM2 job") from None


def load_tokenizer(model_args, prompt_max_tokens: int, response_max_tokens: int):
    """The policy's tokenizer (pad = eos where it has none, right padding), and the model's context length, checked
    against the longest prompt + response."""
    remote = {"trust_remote_code": model_args.trust_remote_code, "revision": model_args.model_revision}
    model_config = from_pretrained(AutoConfig, model_args.model_name_or_path, "model_name_or_path", **remote)
    if not model_args.trust_remote_code and model_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise RunError(f"model_name_or_path '{model_args.model_name_or_path}' is a {model_config.model_type} model "
                       f"({', '.join(model_config.architectures or [])}) with no causal-LM head: PPO here tunes a "
                       "causal language model (gpt2, Llama, SmolLM2, ...)")
    tokenizer = from_pretrained(AutoTokenizer, model_args.model_name_or_path, "model_name_or_path", **remote)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # PPOTrainer.generate pads prompts on the left by itself; its scoring forward pass pads on the tokenizer's side
    # without position ids, so that side must be the right one or absolute positions shift (trl#2654)
    tokenizer.padding_side = "right"
    context = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if context and prompt_max_tokens + response_max_tokens > context:
        raise RunError(f"prompt_max_tokens + response_max_tokens = {prompt_max_tokens + response_max_tokens} exceeds "
                       f"the model's context of {context} tokens; lower one of them")
    return tokenizer, context


def peft_config(model_args):
    """trl.get_peft_config, with lora_target_modules: all-linear passed to peft as the string it documents."""
    config = get_peft_config(model_args)
    if config.target_modules in ({"all-linear"}, ["all-linear"]):
        config.target_modules = "all-linear"
    return config


def load_model(path: str, what: str, model_args, disable_dropout: bool = True, peft: bool = False):
    """Causal LM with a value head (with fresh or saved LoRA adapters if peft), dropout off unless asked for."""
    dtype = model_args.torch_dtype or "float32"
    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype), "revision": model_args.model_revision,
              "trust_remote_code": model_args.trust_remote_code, "attn_implementation": model_args.attn_implementation}
    if peft:
        kwargs |= {"is_trainable": True, "peft_config": peft_config(model_args)}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "v_head weights not used by GPT2LMHeadModel": TRL loads them
    try:
        model = from_pretrained(AutoModelForCausalLMWithValueHead, path, what, **kwargs)
    except RunError as e:
        if "Target modules" in str(e):  # peft: lora_target_modules names modules the model does not have
            raise RunError(f"lora_target_modules {model_args.lora_target_modules} are not modules of '{path}': name "
                           "linear layers it has (e.g. q_proj v_proj for Llama, c_attn for GPT-2, all-linear for "
                           "every one), or leave it unset for peft's choice") from None
        raise
    finally:
        transformers.logging.set_verbosity(verbosity)
    drop_none_cache_argument(model)
    if disable_dropout:
        disable_dropout_in_model(model)
    return model


def load_policy_and_reference(model_args, checkpoint, ref_model_name_or_path, disable_dropout: bool, verbose: bool):
    """The policy (from the checkpoint when resuming) and the frozen reference. With LoRA the reference is None:
    PPOTrainer then scores it as the policy with its adapters disabled, so no second copy is held."""
    policy = load_model(str(checkpoint or model_args.model_name_or_path), "model_name_or_path", model_args,
                        disable_dropout, model_args.use_peft)
    if not model_args.use_peft:
        reference = load_model(ref_model_name_or_path or model_args.model_name_or_path, "ref_model_name_or_path",
                               model_args, disable_dropout)
        return policy, reference
    if os.path.isdir(model_args.model_name_or_path):  # the saved adapter names its base wherever it is loaded
        policy.pretrained_model.peft_config["default"].base_model_name_or_path = \
            str(Path(model_args.model_name_or_path).resolve())
    if verbose:
        n_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        print(f"LoRA: training {n_trainable:,} of {sum(p.numel() for p in policy.parameters()):,} parameters",
              file=sys.stderr)
    return policy, None
