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

from .module_replacement import replace_modules


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


def _foldable(module: nn.Module) -> bool:
    """A detectron2 Conv2d (zero padding) followed by its FrozenBatchNorm2d."""
    return type(module) is Conv2d and isinstance(module.norm, FrozenBatchNorm2d) and module.padding_mode == "zeros"


def _folded_copy(conv: Conv2d) -> FrozenBNFoldedConv2d:
    """A FrozenBNFoldedConv2d with ``conv``'s geometry, sharing its parameters, norm and activation."""
    built = FrozenBNFoldedConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, norm=conv.norm, activation=conv.activation,
    )
    built.weight, built.bias = conv.weight, conv.bias
    return built


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Replace every detectron2 Conv2d in ``module`` whose norm is a FrozenBatchNorm2d by a
    FrozenBNFoldedConv2d sharing its parameters, in place. Returns how many were replaced."""
    return replace_modules(module, _foldable, _folded_copy)
