"""RetinaNet's classification and box subnets (§4), shared across pyramid levels.

Each subnet: NUM_CONVS x [3x3 conv, C filters, (norm), ReLU], then a 3x3 predictor with K*A
(classification) or 4*A (class-agnostic boxes) outputs. Module names match detectron2's
``RetinaNetHead`` (``cls_subnet.*``, ``cls_score``, ``bbox_subnet.*``, ``bbox_pred``).
"""
import math
from typing import List, Tuple

from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.anchor_generator import build_anchor_generator

from ..config import DEFAULTS

# Values accepted by the head's norm (MODEL.RETINANET.NORM).
HEAD_NORMS = ("", "GN")


def prior_bias(prior_prob: float) -> float:
    """Classifier bias b = -log((1 - pi) / pi) so that sigmoid(b) = pi at the start (§3.3)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    return -math.log((1 - prior_prob) / prior_prob)


class FocalRetinaNetHead(nn.Module):
    """Input: list of L features (N, C, Hi, Wi). Output: (logits, deltas), each a list of L tensors
    of shapes (N, A*K, Hi, Wi) and (N, A*4, Hi, Wi)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: List[int],
        norm: str = DEFAULTS.MODEL.RETINANET.NORM,
        prior_prob: float = DEFAULTS.MODEL.RETINANET.PRIOR_PROB,
    ):
        """
        Args:
            input_shape: shapes of the input levels; all must have the same channels.
            num_classes: K, the number of foreground classes.
            num_anchors: A, anchors per location (same on every level).
            conv_dims: output channels of each tower conv (its length is the number of convs).
            norm: "" (none, the paper) or "GN" after each tower conv.
            prior_prob: pi, the initial foreground probability of every anchor.
        """
        super().__init__()
        channels = {shape.channels for shape in input_shape}
        if len(channels) != 1:
            raise ValueError(f"all head input levels need the same channels, got {sorted(channels)}")
        if norm not in HEAD_NORMS:
            raise ValueError(f"norm must be one of {HEAD_NORMS}, got {norm!r}")
        in_channels = channels.pop()
        self.cls_subnet = self._tower(in_channels, conv_dims, norm)
        self.bbox_subnet = self._tower(in_channels, conv_dims, norm)
        tower_out = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(tower_out, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(tower_out, num_anchors * 4, 3, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, prior_bias(prior_prob))

    @staticmethod
    def _tower(in_channels: int, conv_dims: List[int], norm: str) -> nn.Sequential:
        layers = []
        for out_channels in conv_dims:
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            if norm:
                layers.append(get_norm(norm, out_channels))
            layers.append(nn.ReLU())
            in_channels = out_channels
        return nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(f"every level needs the same number of anchors, got {num_anchors}")
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors[0],
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits = [self.cls_score(self.cls_subnet(x)) for x in features]
        deltas = [self.bbox_pred(self.bbox_subnet(x)) for x in features]
        return logits, deltas
