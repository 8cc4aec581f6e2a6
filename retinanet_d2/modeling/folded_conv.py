"""Convolutions followed by frozen batch norm, computed as one convolution.

Frozen BN is a fixed affine map per output channel: conv(x, W) * s + t with
s = gamma / sqrt(var + eps) and t = beta - mean * s. Computing conv(x, W * s) + t instead skips two
passes over the activation in the forward pass and one in the backward pass, and saves nothing
extra (W * s is weight-sized). Parameters, buffers and state-dict names are unchanged (the
FrozenBatchNorm2d submodule stays and holds them); values equal up to float rounding.
"""
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d


class FrozenBNFoldedConv2d(Conv2d):
    """detectron2's Conv2d whose ``norm`` is a FrozenBatchNorm2d, with the norm folded into the
    convolution. Input (N, C_in, H, W); output (N, C_out, H', W')."""

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        bias = self.bias  # locals, so that TorchScript refines the Optional types
        if bias is not None:
            shift = shift + bias * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        x = F.conv2d(x, weight, shift, self.stride, self.padding, self.dilation, self.groups)
        activation = self.activation
        if activation is not None:
            x = activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Turn every detectron2 Conv2d in ``module`` whose norm is a FrozenBatchNorm2d into a
    FrozenBNFoldedConv2d, in place. Returns how many were turned."""
    count = 0
    for child in module.modules():
        if type(child) is Conv2d and isinstance(child.norm, FrozenBatchNorm2d):
            child.__class__ = FrozenBNFoldedConv2d
            count += 1
    return count
