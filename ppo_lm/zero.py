"""DeepSpeed ZeRO-2 and ZeRO-3 under TRL 0.11.4's PPOTrainer (`accelerate launch --config_file
configs/accelerate/deepspeed_zero{2,3}.yaml`): what it takes beyond accelerate, and what is refused.

- The process group: on CPU processes (DS_ACCELERATOR=cpu, no oneCCL) it must be gloo, set up before any model is
  loaded; otherwise each process would train alone as rank 0 of 1.
- No dataloader is handed to accelerate, so the DeepSpeed plugin is given its micro batch (PPO's mini-batch).
- TRL's value-head wrapper returns `state_dict()` keys that its `load_state_dict()` does not read: the engine's own
  checkpoints are saved and loaded with the plain module state dict.
- ZeRO-3 partitions the weights: they are gathered to save a loadable model (with TRL's own context for generation),
  and every process evaluates in step; DeepSpeed 0.16.4 renamed the hook method TRL calls after gathering
  (`_register_hooks_recursively`).
"""

import os
import types
from contextlib import contextmanager

import torch
from accelerate.utils import parse_flag_from_env

from ppo_lm.errors import RunError

STAGES = (2, 3)  # what the tests run; 0 and 1 are refused rather than untested


def in_use() -> bool:
    return parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")


def check(save_merged: bool) -> None:
    """At start-up: DeepSpeed installed, a tested ZeRO stage, and no feature this script does not support."""
    if not in_use():
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise RunError("the accelerate config asks for DeepSpeed, which is not installed: pip install -r "
                       "requirements.txt (it pins deepspeed), or launch with configs/accelerate/multi_gpu.yaml"
                       ) from None
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise RunError("a DeepSpeed config file (deepspeed_config_file) is not supported: set zero_stage in the "
                       "accelerate config, as configs/accelerate/deepspeed_zero2.yaml and deepspeed_zero3.yaml do")
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in STAGES:
        raise RunError(f"DeepSpeed ZeRO stage {stage} is not supported here (tested: ZeRO-2 and ZeRO-3): use "
                       "configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml")
    for what in ("OFFLOAD_OPTIMIZER_DEVICE", "OFFLOAD_PARAM_DEVICE"):
        device = os.environ.get(f"ACCELERATE_DEEPSPEED_{what}", "none").lower()
        if device not in ("none", ""):
            raise RunError(f"DeepSpeed {what.lower()} '{device}' is not supported: offload needs DeepSpeed's compiled "
                           "CPU Adam and is not tested here; set it to none (or use LoRA to fit a larger model)")
    if stage == 3 and save_merged:
        raise RunError("save_merged is not supported under ZeRO-3 (the weights are sharded at the end of the run): "
                       "unset it, and merge OUTPUT_DIR's adapters afterwards with peft's merge_and_unload")
    if parse_flag_from_env("ACCELERATE_DEEPSPEED_ZERO3_INIT"):
        raise RunError("zero3_init_flag is not supported: TRL's value-head model is built after its base model is "
                       "loaded; set zero3_init_flag: false")


def process_group() -> dict:
    """accelerate's PartialState arguments: DeepSpeed on CPU processes needs the gloo backend named (accelerate
    would otherwise count one process and let each train alone as rank 0 of 1)."""
    return {"backend": "gloo"} if in_use() and not torch.cuda.is_available() else {}


def plugin(mini_batch_size: int):
    """accelerate's DeepSpeedPlugin from the launch config, with PPO's mini-batch as the micro batch."""
    from accelerate.utils import DeepSpeedPlugin

    ds_plugin = DeepSpeedPlugin()
    ds_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = mini_batch_size
    return ds_plugin


def patch_deepspeed() -> None:
    """DeepSpeed >= 0.16.4 renamed the method TRL's ZeRO-3 generation calls to put the hooks back."""
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

    if not hasattr(DeepSpeedZeRoOffload, "_register_hooks_recursively"):
        DeepSpeedZeRoOffload._register_hooks_recursively = DeepSpeedZeRoOffload._register_deepspeed_module


def stage(accelerator) -> int:
    """The ZeRO stage of this run (accelerate's DeepSpeed plugin, as TRL reads it), 0 without DeepSpeed; with it,
    PPOTrainer's model and reference are DeepSpeed engines."""
    ds_plugin = accelerator.state.deepspeed_plugin
    return ds_plugin.zero_stage if ds_plugin is not None else 0


@contextmanager
def plain_state_dict(module):
    """The module's own nn.Module.state_dict (keys as load_state_dict reads them), instead of TRL's wrapper's."""
    module.state_dict = types.MethodType(torch.nn.Module.state_dict, module)
    try:
        yield
    finally:
        del module.state_dict


def save_engine(engine, directory) -> None:
    """Every process: the engine's checkpoint (module, sharded optimizer state) in directory/deepspeed."""
    with plain_state_dict(engine.module):
        engine.save_checkpoint(str(directory / "deepspeed"), tag="state", client_state={}, save_latest=False)


def load_engine(engine, directory) -> None:
    with plain_state_dict(engine.module):
        path, _ = engine.load_checkpoint(str(directory / "deepspeed"), tag="state", load_module_strict=True,
                                         load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise RunError(f"checkpoint {directory} holds no DeepSpeed state (deepspeed/state): it was not saved under "
                       "DeepSpeed; resume it with the launch config it was saved with")
