"""The paper's loss family as objects that FocalRetinaNet takes (``classification_loss=``), as
detectron2 injects its matcher and box transform.

Each object maps a batch's ``DenseOutputs`` (and the box loss of each foreground anchor, which the
model computes) to ``LossSums(cls, box, count)``: the classification and box loss sums and the number
they are divided by (all-reduced by the model):

* ``FocalLoss`` (§3, eq. 5; gamma 0 is alpha-balanced CE): FL summed over every non-ignored anchor,
  the box loss over foreground anchors, count = foreground anchors (§4). ``far_negative_weight`` m
  multiplies the loss of the background anchors that overlap no ground-truth box (the easy-negative
  mass of a sparser dataset, at the same compute; 1: the paper's loss).
* ``FocalLossStar`` (Appendix A): the same with FL*.
* ``OhemLoss`` (Table 1(d)): FL of the anchors ohem.py selects (by classification + box loss), both
  sums over those anchors only, count = anchors selected.

Labels: (N, R) int64 in {-1 ignore, 0..K-1 class, K background}. Constructors validate their own
arguments, naming them; ``build_classification_loss`` names the config keys.
"""
from typing import Dict, NamedTuple, Optional

import torch
from torch import Tensor, nn

from detectron2.config import configurable

from ..config import DEFAULTS, retinanet_node
from .losses import (
    check_fl_star_args,
    check_focal_loss_args,
    focal_loss_from_labels,
    focal_loss_star_from_labels,
    one_hot_targets,
    sigmoid_focal_loss,
)
from .ohem import check_ohem_args, ohem_select


_D2, _OURS = DEFAULTS.MODEL.RETINANET, DEFAULTS.MODEL.FOCAL_RETINANET


class DenseOutputs(NamedTuple):
    """A batch's dense predictions and their assignment, levels concatenated (R anchors)."""

    anchors: Tensor  # (R, 4) XYXY, the same for every image
    logits: Tensor  # (N, R, K), at least float32
    deltas: Tensor  # (N, R, 4), at least float32
    labels: Tensor  # (N, R) int64 in {-1 ignore, 0..K-1 class, K background}
    matched_boxes: Tensor  # (N, R, 4) the assigned box of each foreground anchor, else 0
    far_negatives: Tensor  # (N, R) bool: background anchors whose IoU with every box is 0


class LossSums(NamedTuple):
    """Loss sums of a batch and their normaliser's count (before the all-reduce); ``far_cls``, where
    the loss weighs far negatives, the (weighted, detached) part of ``cls`` that they carry."""

    cls: Tensor
    box: Tensor
    count: Tensor
    far_cls: Optional[Tensor] = None


class FocalLoss(nn.Module):
    """FL over all non-ignored anchors, normalised by the foreground count (the paper's RetinaNet)."""

    # Config key of each argument, for errors of models built from a config.
    CONFIG_KEYS = {
        "alpha": "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        "gamma": "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        "far_negative_weight": "MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT",
    }

    @configurable
    def __init__(
        self,
        *,
        alpha: float = _D2.FOCAL_LOSS_ALPHA,
        gamma: float = _D2.FOCAL_LOSS_GAMMA,
        far_negative_weight: float = _OURS.FAR_NEGATIVE_WEIGHT,
    ):
        """
        Args:
            alpha: weight of positives in [0, 1], or -1 for none.
            gamma: focusing parameter >= 0 (0: alpha-balanced CE).
            far_negative_weight: m > 0, the weight of the loss of background anchors that overlap no
                ground-truth box (1: every anchor weighs the same, the paper's loss).
        """
        super().__init__()
        check_focal_loss_args(alpha, gamma)
        if not far_negative_weight > 0:
            raise ValueError(f"far_negative_weight must be > 0, got {far_negative_weight}")
        self.alpha, self.gamma, self.far_negative_weight = float(alpha), float(gamma), float(far_negative_weight)

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "far_negative_weight": retinanet_node(cfg).FAR_NEGATIVE_WEIGHT,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.CONFIG_KEYS)

    def classification_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Summed loss of logits (M, K) against labels (M,); rows labelled -1 count 0."""
        return focal_loss_from_labels(logits, labels, self.alpha, self.gamma)

    @torch.jit.unused  # training only: a scripted (exported) model needs none of it
    def forward(self, outputs: DenseOutputs, foreground: Tensor, fg_box_losses: Tensor) -> LossSums:
        """
        Args:
            outputs: the batch's dense outputs (N images, R anchors, K classes).
            foreground: (N, R) bool, labels in 0..K-1.
            fg_box_losses: (F,) box loss of each foreground anchor, in ``foreground``'s row-major order.
        """
        num_classes = outputs.logits.shape[-1]
        logits, labels = outputs.logits.reshape(-1, num_classes), outputs.labels.reshape(-1)
        box, count = fg_box_losses.sum(), foreground.sum()
        if self.far_negative_weight == 1.0:
            return LossSums(self.classification_sum(logits, labels), box, count)
        far = outputs.far_negatives.reshape(-1)
        ignored = torch.full_like(labels, -1)
        near_cls = self.classification_sum(logits, torch.where(far, ignored, labels))
        far_cls = self.far_negative_weight * self.classification_sum(logits, torch.where(far, labels, ignored))
        return LossSums(near_cls + far_cls, box, count, far_cls.detach())


class FocalLossStar(FocalLoss):
    """FL* (Appendix A): ``-log(sigmoid(gamma * x_t + beta)) / gamma``, alpha-weighted, in place of FL."""

    CONFIG_KEYS = {
        "alpha": "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        "gamma": "MODEL.FOCAL_RETINANET.STAR_GAMMA",
        "beta": "MODEL.FOCAL_RETINANET.STAR_BETA",
        "far_negative_weight": "MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT",
    }

    @configurable
    def __init__(
        self,
        *,
        alpha: float = _D2.FOCAL_LOSS_ALPHA,
        gamma: float = _OURS.STAR_GAMMA,
        beta: float = _OURS.STAR_BETA,
        far_negative_weight: float = _OURS.FAR_NEGATIVE_WEIGHT,
    ):
        """
        Args:
            alpha: weight of positives in [0, 1], or -1 for none.
            gamma: FL*'s gamma > 0.
            beta: FL*'s shift of the modified logit.
            far_negative_weight: as FocalLoss's.
        """
        check_fl_star_args(gamma, beta)
        super().__init__(alpha=alpha, gamma=0.0, far_negative_weight=far_negative_weight)
        self.gamma, self.beta = float(gamma), float(beta)

    @classmethod
    def from_config(cls, cfg):
        node = retinanet_node(cfg)
        return {"alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, "gamma": node.STAR_GAMMA, "beta": node.STAR_BETA,
                "far_negative_weight": node.FAR_NEGATIVE_WEIGHT}

    def classification_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_loss_star_from_labels(logits, labels, self.alpha, self.gamma, self.beta)


class OhemLoss(FocalLoss):
    """Table 1(d)'s OHEM baseline: FL (plain CE with alpha -1, gamma 0) and box loss of the anchors
    ohem_select picks per image, each sum divided by their number."""

    CONFIG_KEYS = {
        "alpha": "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        "gamma": "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        "batch_size_per_image": "MODEL.FOCAL_RETINANET.OHEM_BATCH_SIZE_PER_IMAGE",
        "fg_fraction": "MODEL.FOCAL_RETINANET.OHEM_FG_FRACTION",
        "nms_thresh": "MODEL.FOCAL_RETINANET.OHEM_NMS_THRESH",
    }

    @configurable
    def __init__(
        self,
        *,
        alpha: float = _D2.FOCAL_LOSS_ALPHA,
        gamma: float = _D2.FOCAL_LOSS_GAMMA,
        batch_size_per_image: int = _OURS.OHEM_BATCH_SIZE_PER_IMAGE,
        fg_fraction: float = _OURS.OHEM_FG_FRACTION,
        nms_thresh: float = _OURS.OHEM_NMS_THRESH,
    ):
        """
        Args:
            alpha, gamma: the FL that scores and trains the selected anchors.
            batch_size_per_image: B, anchors kept per image.
            fg_fraction: largest foreground share of B (0.25: the paper's 1:3), or -1 for none.
            nms_thresh: IoU above which a lower-loss anchor is suppressed.
        """
        super().__init__(alpha=alpha, gamma=gamma)
        check_ohem_args(batch_size_per_image, fg_fraction, nms_thresh)
        self.batch_size_per_image, self.fg_fraction, self.nms_thresh = batch_size_per_image, fg_fraction, nms_thresh

    @classmethod
    def from_config(cls, cfg):
        node = retinanet_node(cfg)
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "batch_size_per_image": node.OHEM_BATCH_SIZE_PER_IMAGE,
            "fg_fraction": node.OHEM_FG_FRACTION,
            "nms_thresh": node.OHEM_NMS_THRESH,
        }

    @torch.jit.unused  # training only
    def forward(self, outputs: DenseOutputs, foreground: Tensor, fg_box_losses: Tensor) -> LossSums:
        anchors, logits, labels = outputs.anchors, outputs.logits, outputs.labels
        num_classes = logits.shape[-1]
        valid = labels >= 0
        cls = sigmoid_focal_loss(logits, one_hot_targets(labels, num_classes, logits.dtype), self.alpha, self.gamma)
        cls = cls.sum(dim=-1) * valid  # (N, R)
        box = torch.zeros_like(cls)
        box[foreground] = fg_box_losses.to(box.dtype)
        selected = torch.zeros_like(valid)
        for i in range(labels.shape[0]):
            picked = ohem_select(
                (cls[i] + box[i]).detach(), anchors, labels[i], num_classes,
                self.batch_size_per_image, self.fg_fraction, self.nms_thresh,
            )
            selected[i, picked] = True
        return LossSums(cls[selected].sum(), box[selected].sum(), selected.sum())


# MODEL.FOCAL_RETINANET.LOSS -> loss class.
CLASSIFICATION_LOSSES: Dict[str, type] = {"focal": FocalLoss, "focal_star": FocalLossStar, "ohem": OhemLoss}


def build_classification_loss(cfg) -> FocalLoss:
    """The loss that MODEL.FOCAL_RETINANET.LOSS names, from its config keys; ValueError naming the
    key whose value is out of range."""
    name = retinanet_node(cfg).LOSS
    if name not in CLASSIFICATION_LOSSES:
        raise ValueError(f"MODEL.FOCAL_RETINANET.LOSS must be one of {tuple(CLASSIFICATION_LOSSES)}, got {name!r}")
    loss_class = CLASSIFICATION_LOSSES[name]
    kwargs = loss_class.from_config(cfg)
    if "far_negative_weight" not in kwargs and retinanet_node(cfg).FAR_NEGATIVE_WEIGHT != 1.0:
        raise ValueError(
            f"MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT={retinanet_node(cfg).FAR_NEGATIVE_WEIGHT} applies to the "
            f"losses over every anchor (focal, focal_star), not to MODEL.FOCAL_RETINANET.LOSS={name!r}"
        )
    try:
        return loss_class(**kwargs)
    except ValueError as error:
        keys = ", ".join(f"{loss_class.CONFIG_KEYS[k]}={v!r}" for k, v in kwargs.items())
        raise ValueError(f"{error} (from the config: {keys})") from error
