"""Precision helpers of the model's layers: predictions made under autocast (float16, bfloat16) are
upcast before losses and decoding, so that both compute in float32."""
import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` as float32 if it is float16 or bfloat16 (an autocast output), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
