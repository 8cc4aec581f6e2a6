"""ResNet + FPN with the paper's P6/P7 (§4): P3–P5 from C3–C5, P6 = 3x3/2 conv on C5 (or P5),
P7 = 3x3/2 conv on ReLU(P6). Strides 8, 16, 32, 64, 128; every level has FPN.OUT_CHANNELS channels.
The ResNet's frozen batch norms are folded into their convolutions (folded_conv.py).
"""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone, build_resnet_backbone

from ..config import DEFAULTS, naming_config_keys, retinanet_node
from .folded_conv import fold_frozen_batchnorm

# Values accepted by MODEL.FOCAL_RETINANET.P6_INPUT.
P6_INPUTS = ("res5", "p5")


class P6P7TopBlock(nn.Module):
    """FPN top block producing P6 and P7 from C5 (``in_feature="res5"``) or P5 (``"p5"``).

    Input (N, in_channels, H, W); outputs [P6 (N, C, H/2, W/2), P7 (N, C, H/4, W/4)], rounded up.
    Module names ``p6``/``p7`` match detectron2's, so its checkpoints load unchanged.
    """

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = DEFAULTS.MODEL.FOCAL_RETINANET.P6_INPUT):
        """
        Args:
            in_channels: channels of the input feature (C5's, or FPN's for P5).
            out_channels: channels of P6 and P7.
            in_feature: "res5" (the paper) or "p5".
        """
        super().__init__()
        if in_feature not in P6_INPUTS:
            raise ValueError(
                f"in_feature must be one of {P6_INPUTS}, got {in_feature!r}"
            )
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            weight_init.c2_xavier_fill(conv)

    def forward(self, x: Tensor) -> List[Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


def focal_retinanet_fpn(
    *,
    bottom_up: Backbone,
    in_features: List[str],
    out_channels: int,
    norm: str = DEFAULTS.MODEL.FPN.NORM,
    p6_input: str = DEFAULTS.MODEL.FOCAL_RETINANET.P6_INPUT,
    fuse_type: str = DEFAULTS.MODEL.FPN.FUSE_TYPE,
) -> FPN:
    """detectron2's FPN over ``bottom_up`` (a ResNet, whose frozen batch norms are folded into their
    convolutions) on ``in_features`` (e.g. res3-res5), with the P6/P7 top block; the builder that
    yacs configs (through the registry) and LazyConfig files (``L(focal_retinanet_fpn)(...)``) share.

    Args:
        bottom_up: the ResNet; its output shapes must include in_features and "res5".
        in_features: ResNet outputs that FPN turns into P3..P5.
        out_channels: C, the channels of every level.
        norm: FPN's norm ("" or e.g. "GN").
        p6_input: "res5" (C5, the paper) or "p5".
        fuse_type: FPN's "sum" or "avg".
    """
    fold_frozen_batchnorm(bottom_up)
    top_in_channels = bottom_up.output_shape()["res5"].channels if p6_input == "res5" else out_channels
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=norm,
        top_block=P6P7TopBlock(top_in_channels, out_channels, p6_input),
        fuse_type=fuse_type,
    )


@BACKBONE_REGISTRY.register()
def build_focal_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (MODEL.RESNETS, depths 18–152) + FPN on MODEL.FPN.IN_FEATURES + P6/P7 top block."""
    with naming_config_keys({"in_feature": "MODEL.FOCAL_RETINANET.P6_INPUT"}):
        return focal_retinanet_fpn(
            bottom_up=build_resnet_backbone(cfg, input_shape),
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            p6_input=retinanet_node(cfg).P6_INPUT,
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )
