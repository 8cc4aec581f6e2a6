"""The box regression loss as an object FocalRetinaNet takes (``box_loss=``), as it takes its
classification loss: each maps the F foreground anchors of a batch, their predicted deltas and their
matched boxes to the (F,) loss of each anchor, which the classification loss object sums.

* ``SmoothL1BoxLoss(beta)``: smooth L1 on the encoded deltas (beta 0: L1, the paper's RetinaNet).
* ``IoUBoxLoss(kind)``: 1 - GIoU (fvcore), DIoU or CIoU (detectron2) of the decoded boxes.

``build_box_loss`` makes one from detectron2's RetinaNet arguments (``box_reg_loss_type``,
``smooth_l1_beta``: MODEL.RETINANET.BBOX_REG_LOSS_TYPE, SMOOTH_L1_LOSS_BETA), so that every value
detectron2's RetinaNet accepts is accepted here.
"""
import torch
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import Tensor, nn

from detectron2.layers.losses import ciou_loss, diou_loss
from detectron2.modeling.box_regression import Box2BoxTransform

IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


class SmoothL1BoxLoss(nn.Module):
    """Smooth L1 between predicted and target deltas, summed over the 4 coordinates."""

    def __init__(self, beta: float = 0.0):
        """beta >= 0: the L1/L2 crossover (0: L1)."""
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"smooth L1 beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    @torch.jit.unused  # training only
    def forward(self, anchors: Tensor, deltas: Tensor, boxes: Tensor, transform: Box2BoxTransform) -> Tensor:
        """(F,) loss of F anchors (F, 4) XYXY with predicted deltas (F, 4) and matched boxes (F, 4)."""
        target = transform.get_deltas(anchors, boxes)
        return smooth_l1_loss(deltas, target, beta=self.beta, reduction="none").sum(dim=1)


class IoUBoxLoss(nn.Module):
    """An IoU loss (``kind``: "giou", "diou" or "ciou") between the decoded and the matched boxes."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in IOU_LOSSES:
            raise ValueError(f"IoU box loss kind must be one of {tuple(IOU_LOSSES)}, got {kind!r}")
        self.kind = kind

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    @torch.jit.unused  # training only
    def forward(self, anchors: Tensor, deltas: Tensor, boxes: Tensor, transform: Box2BoxTransform) -> Tensor:
        """(F,) loss, as SmoothL1BoxLoss.forward."""
        return IOU_LOSSES[self.kind](transform.apply_deltas(deltas, anchors), boxes, reduction="none")


BOX_LOSS_TYPES = ("smooth_l1", *IOU_LOSSES)


def build_box_loss(box_reg_loss_type: str, smooth_l1_beta: float) -> nn.Module:
    """The box loss of detectron2's RetinaNet arguments; ValueError naming the argument otherwise."""
    if box_reg_loss_type not in BOX_LOSS_TYPES:
        raise ValueError(f"box_reg_loss_type must be one of {BOX_LOSS_TYPES}, got {box_reg_loss_type!r}")
    if box_reg_loss_type == "smooth_l1":
        if smooth_l1_beta < 0:
            raise ValueError(f"smooth_l1_beta must be >= 0, got {smooth_l1_beta}")
        return SmoothL1BoxLoss(smooth_l1_beta)
    return IoUBoxLoss(box_reg_loss_type)
