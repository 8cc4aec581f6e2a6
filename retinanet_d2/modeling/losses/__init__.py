"""The paper's loss family, in one folder:

* maths.py: the losses as functions (FL, FL*, the fused label form), numerically stable at every
  finite logit; compiled.py: the torch.compile dispatcher of their elementwise kernels;
* dense.py: the loss objects FocalRetinaNet takes (``classification_loss=``: FocalLoss, FocalLossStar,
  OhemLoss) and their contract (DenseOutputs in, LossSums out);
* box.py: the box regression losses (smooth L1 / L1, GIoU, DIoU, CIoU);
* ohem.py: OHEM's selection of the anchors a loss is computed on (Table 1(d)).

``sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none")`` has fvcore's and
torchvision's signature and values, so it drops in for theirs.
"""
from .box import IoUBoxLoss, SmoothL1BoxLoss, build_box_loss
from .dense import DenseLoss, DenseOutputs, FocalLoss, FocalLossStar, LossSums, OhemLoss, build_classification_loss
from .maths import (
    focal_loss_from_labels, focal_loss_star_from_labels, one_hot_targets, sigmoid_focal_loss, sigmoid_focal_loss_star,
)

__all__ = [
    "DenseLoss", "DenseOutputs", "FocalLoss", "FocalLossStar", "IoUBoxLoss", "LossSums", "OhemLoss", "SmoothL1BoxLoss",
    "build_box_loss", "build_classification_loss", "focal_loss_from_labels", "focal_loss_star_from_labels",
    "one_hot_targets", "sigmoid_focal_loss", "sigmoid_focal_loss_star",
]
