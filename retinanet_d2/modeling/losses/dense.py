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
* ``OhemLoss`` (Table 1(d)): a composition over a per-anchor loss (``scoring_loss``, an
  ``AnchorSumLoss``): that loss of the anchors ohem.py selects (by classification + box loss), both
  sums over those anchors only, count = anchors selected.

The interface is ``DenseLoss`` (forward -> ``LossSums``); ``AnchorSumLoss`` is the part FL and FL*
share (the sum over every non-ignored anchor, the far-negative weight), each giving its own
``per_anchor`` loss and ``classification_sum``.

Labels: (N, R) int64 in {-1 ignore, 0..K-1 class, K background}. Constructors validate their own
arguments, naming them; ``build_classification_loss`` names the config keys.
"""
from typing import Dict, NamedTuple, Optional

import torch
from torch import Tensor, nn

from detectron2.config import configurable

from ...config import DEFAULTS, retinanet_node
from .maths import (
    check_fl_star_args,
    check_focal_loss_args,
    focal_loss_from_labels,
    focal_loss_star_from_labels,
    one_hot_targets,
    sigmoid_focal_loss,
    sigmoid_focal_loss_star,
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


def _config_value(cfg, key: str):
    """The value of a dotted config key (MODEL.FOCAL_RETINANET.* from retinanet_node)."""
    _, node_name, name = key.split(".")
    return getattr(retinanet_node(cfg) if node_name == "FOCAL_RETINANET" else cfg.MODEL[node_name], name)


class DenseLoss(nn.Module):
    """The loss interface FocalRetinaNet calls: a batch's dense outputs, its foreground mask and the
    box loss of each foreground anchor -> LossSums (the classification and box sums and the count
    they are divided by). Subclasses name their arguments' config keys in CONFIG_KEYS, which is what
    from_config reads."""

    CONFIG_KEYS: Dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {argument: _config_value(cfg, key) for argument, key in cls.CONFIG_KEYS.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.CONFIG_KEYS)

    def forward(self, outputs: DenseOutputs, foreground: Tensor, fg_box_losses: Tensor) -> LossSums:
        """
        Args:
            outputs: the batch's dense outputs (N images, R anchors, K classes).
            foreground: (N, R) bool, labels in 0..K-1.
            fg_box_losses: (F,) box loss of each foreground anchor, in ``foreground``'s row-major order.
        """
        raise NotImplementedError


class AnchorSumLoss(DenseLoss):
    """A classification loss summed over every non-ignored anchor, the box loss over the foreground,
    normalised by the foreground count; the background anchors that overlap no box weigh
    ``far_negative_weight`` (m) times. Subclasses give ``per_anchor`` and ``classification_sum``."""

    def __init__(self, far_negative_weight: float):
        """far_negative_weight: m > 0 (1: every anchor weighs the same, the paper's loss)."""
        super().__init__()
        if not far_negative_weight > 0:
            raise ValueError(f"far_negative_weight must be > 0, got {far_negative_weight}")
        self.far_negative_weight = float(far_negative_weight)

    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(...,) loss of each anchor (summed over classes) of logits (..., K) against labels (...);
        0 where the label is -1."""
        raise NotImplementedError

    def classification_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Summed loss of logits (M, K) against labels (M,); rows labelled -1 count 0."""
        return self.per_anchor(logits, labels).sum()

    @torch.jit.unused  # training only: a scripted (exported) model needs none of it
    def forward(self, outputs: DenseOutputs, foreground: Tensor, fg_box_losses: Tensor) -> LossSums:
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


class FocalLoss(AnchorSumLoss):
    """FL over all non-ignored anchors, normalised by the foreground count (the paper's RetinaNet)."""

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
            far_negative_weight: see AnchorSumLoss.
        """
        super().__init__(far_negative_weight)
        check_focal_loss_args(alpha, gamma)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        targets = one_hot_targets(labels, logits.shape[-1], logits.dtype)
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma).sum(dim=-1) * (labels >= 0)

    def classification_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_loss_from_labels(logits, labels, self.alpha, self.gamma)  # fused: no one-hot copy


class FocalLossStar(AnchorSumLoss):
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
            far_negative_weight: see AnchorSumLoss.
        """
        super().__init__(far_negative_weight)
        check_focal_loss_args(alpha, 0.0)
        check_fl_star_args(gamma, beta)
        self.alpha, self.gamma, self.beta = float(alpha), float(gamma), float(beta)

    def per_anchor(self, logits: Tensor, labels: Tensor) -> Tensor:
        targets = one_hot_targets(labels, logits.shape[-1], logits.dtype)
        loss = sigmoid_focal_loss_star(logits, targets, self.alpha, self.gamma, self.beta)
        return loss.sum(dim=-1) * (labels >= 0)

    def classification_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_loss_star_from_labels(logits, labels, self.alpha, self.gamma, self.beta)


class OhemLoss(DenseLoss):
    """Table 1(d)'s OHEM baseline: ``scoring_loss`` (plain CE in the paper: FocalLoss with alpha -1,
    gamma 0) and the box loss of the anchors ohem_select picks per image, each sum divided by their
    number."""

    CONFIG_KEYS = {
        "batch_size_per_image": "MODEL.FOCAL_RETINANET.OHEM_BATCH_SIZE_PER_IMAGE",
        "fg_fraction": "MODEL.FOCAL_RETINANET.OHEM_FG_FRACTION",
        "nms_thresh": "MODEL.FOCAL_RETINANET.OHEM_NMS_THRESH",
    }

    @configurable
    def __init__(
        self,
        *,
        scoring_loss: AnchorSumLoss,
        batch_size_per_image: int = _OURS.OHEM_BATCH_SIZE_PER_IMAGE,
        fg_fraction: float = _OURS.OHEM_FG_FRACTION,
        nms_thresh: float = _OURS.OHEM_NMS_THRESH,
    ):
        """
        Args:
            scoring_loss: the per-anchor loss that scores and trains the selected anchors (its
                far-negative weight must be 1: OHEM picks its own negatives).
            batch_size_per_image: B, anchors kept per image.
            fg_fraction: largest foreground share of B (0.25: the paper's 1:3), or -1 for none.
            nms_thresh: IoU above which a lower-loss anchor is suppressed.
        """
        super().__init__()
        check_ohem_args(batch_size_per_image, fg_fraction, nms_thresh)
        if scoring_loss.far_negative_weight != 1.0:
            raise ValueError(f"OHEM picks its own negatives: its scoring loss's far_negative_weight must be 1, "
                             f"got {scoring_loss.far_negative_weight}")
        self.scoring_loss = scoring_loss
        self.batch_size_per_image, self.fg_fraction, self.nms_thresh = batch_size_per_image, fg_fraction, nms_thresh

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), "scoring_loss": FocalLoss(**FocalLoss.from_config(cfg))}

    @torch.jit.unused  # training only
    def forward(self, outputs: DenseOutputs, foreground: Tensor, fg_box_losses: Tensor) -> LossSums:
        anchors, labels = outputs.anchors, outputs.labels
        cls = self.scoring_loss.per_anchor(outputs.logits, labels)  # (N, R)
        box = torch.zeros_like(cls)
        box[foreground] = fg_box_losses.to(box.dtype)
        selected = torch.zeros_like(labels, dtype=torch.bool)
        for i in range(labels.shape[0]):
            picked = ohem_select(
                (cls[i] + box[i]).detach(), anchors, labels[i], outputs.logits.shape[-1],
                self.batch_size_per_image, self.fg_fraction, self.nms_thresh,
            )
            selected[i, picked] = True
        return LossSums(cls[selected].sum(), box[selected].sum(), selected.sum())


# MODEL.FOCAL_RETINANET.LOSS -> loss class.
CLASSIFICATION_LOSSES: Dict[str, type] = {"focal": FocalLoss, "focal_star": FocalLossStar, "ohem": OhemLoss}
# The config keys each MODEL.FOCAL_RETINANET.LOSS reads (OHEM: its scoring FocalLoss's too).
_KEYS_READ = {"focal": list(FocalLoss.CONFIG_KEYS.values()), "focal_star": list(FocalLossStar.CONFIG_KEYS.values()),
              "ohem": [*FocalLoss.CONFIG_KEYS.values(), *OhemLoss.CONFIG_KEYS.values()]}


def build_classification_loss(cfg) -> DenseLoss:
    """The loss that MODEL.FOCAL_RETINANET.LOSS names, from its config keys; ValueError naming the
    keys it read and their values when one is out of range."""
    name = retinanet_node(cfg).LOSS
    if name not in CLASSIFICATION_LOSSES:
        raise ValueError(f"MODEL.FOCAL_RETINANET.LOSS must be one of {tuple(CLASSIFICATION_LOSSES)}, got {name!r}")
    loss_class = CLASSIFICATION_LOSSES[name]
    try:
        return loss_class(**loss_class.from_config(cfg))
    except ValueError as error:
        keys = ", ".join(f"{key}={_config_value(cfg, key)!r}" for key in _KEYS_READ[name])
        raise ValueError(f"{error} (MODEL.FOCAL_RETINANET.LOSS={name!r}; from the config: {keys})") from error
