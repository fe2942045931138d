"""On the faked GPU machine (tests/gpu_machine): prints whether torch sees a GPU, then uses it."""

import torch

print(torch.cuda.is_available())
torch.zeros(1).cuda()
