"""Imported at start-up by a Python whose PYTHONPATH names this folder: with AS_ON_A_GPU_MACHINE set, torch says a
GPU is there and fails loudly (with the stack) on the first use of it, so a test can check that a CPU run on a
machine with a GPU never touches the GPU."""

import os

if os.environ.get("AS_ON_A_GPU_MACHINE"):
    import sys
    import traceback

    import torch

    def _fails(name):
        def use(*args, **kwargs):
            traceback.print_stack(file=sys.stderr)
            raise RuntimeError(f"the GPU was used (torch.cuda.{name}) in a CPU run")
        return use

    def _is_available():  # CUDA_VISIBLE_DEVICES="" hides the GPU, as on a real machine
        return os.environ.get("CUDA_VISIBLE_DEVICES") != ""

    def _device_count():
        return int(_is_available())

    _cpu_build_accelerator = torch._C._get_accelerator

    def _get_accelerator(*args):  # what torch.distributed.barrier(device_ids=...) asks
        return torch.device("cuda") if _is_available() else _cpu_build_accelerator(*args)

    torch.cuda.is_available, torch.cuda.device_count = _is_available, _device_count
    torch._C._get_accelerator = _get_accelerator
    for name in ("_lazy_init", "current_device", "set_device"):  # every CUDA tensor, generator or context starts here
        setattr(torch.cuda, name, _fails(name))
