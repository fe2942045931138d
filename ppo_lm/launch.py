"""How the script's process starts: what must be set before torch, TRL and DeepSpeed are imported. Called by
train_ppo.py when it runs as a script, so importing train_ppo (the tests, the benchmarks) changes nothing."""

import os
import warnings

TRUE = ("1", "true", "yes", "y", "t", "on")


def prepare_process() -> None:
    """Environment variables read at import time by CUDA and DeepSpeed, and TRL's own deprecation warnings."""
    # TRL 0.11 marks PPOConfig/PPOTrainer deprecated in favour of PPOv2, which has no reward function: not for us
    warnings.filterwarnings("ignore", message=".*PPOv2", category=FutureWarning)
    # DeepSpeed's ZeRO-3 calls torch.distributed functions that torch 2.13 marks deprecated, at every collective
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in TRUE or os.environ.get("DS_ACCELERATOR") == "cpu":
        # a CPU run (`accelerate launch --cpu`, or DeepSpeed on CPU processes) on a machine with a GPU: hide the GPU
        # before torch sees it, or accelerate's barrier between processes would put a tensor on cuda:LOCAL_RANK (rank
        # 1 fails on a one-GPU machine)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if not torch.cuda.is_available():  # DeepSpeed, which TRL imports when installed, would warn it fell back to CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
