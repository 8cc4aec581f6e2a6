"""``FocalRetinaNet``: the paper's one-stage detector as a detectron2 meta-architecture.

Training: every anchor is assigned (assignment.py); the classification loss (FL or FL*) is summed
over all non-ignored anchors and the box loss over foreground anchors, both divided by the number of
foreground anchors of the whole batch (all-reduced over processes, §3/§4). The OHEM baseline (Table
1(d)) sums over the anchors ohem.py selects instead, divided by their number. Inference: per level,
scores > SCORE_THRESH_TEST, top TOPK_CANDIDATES_TEST, decode; then per-class NMS and at most
DETECTIONS_PER_IMAGE detections.
"""
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm

from ..config import LOSS_NAMES
from .assignment import match_anchors
from .head import FocalRetinaNetHead
from .losses import (
    check_fl_star_args,
    check_focal_loss_args,
    focal_loss_from_labels,
    focal_loss_star_from_labels,
    sigmoid_focal_loss,
)
from .ohem import check_ohem_args, ohem_select

# Values accepted by MODEL.RETINANET.BBOX_REG_LOSS_TYPE.
BOX_LOSSES = ("smooth_l1", "giou")


def flatten_levels(per_level: List[Tensor], dim: int) -> Tensor:
    """(N, A*dim, Hi, Wi) per level -> (N, sum(Hi*Wi*A), dim), detectron2's anchor order."""
    flat = []
    for x in per_level:
        n, _, h, w = x.shape
        flat.append(x.view(n, -1, dim, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, dim))
    return torch.cat(flat, dim=1)


def topk_count(candidates: Tensor, k: int):
    """min(k, len(candidates)); a traced tensor while tracing, so that an exported model keeps the
    number of candidates dynamic instead of the traced input's."""
    if torch.jit.is_tracing():
        return torch.clamp(torch._shape_as_tensor(candidates)[0], max=k)
    return min(k, candidates.shape[0])


def check_iou_thresholds(thresholds, labels) -> None:
    """Raise ValueError unless the matcher keys describe the paper's three-way assignment."""
    if len(thresholds) != 2 or not 0.0 <= thresholds[0] <= thresholds[1] <= 1.0:
        raise ValueError(
            "MODEL.RETINANET.IOU_THRESHOLDS must be [low, high] with 0 <= low <= high <= 1, "
            f"got {list(thresholds)}"
        )
    if list(labels) != [0, -1, 1]:
        raise ValueError(f"MODEL.RETINANET.IOU_LABELS must be [0, -1, 1], got {list(labels)}")


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(DenseDetector):
    """RetinaNet with the paper's normaliser and loss family; detectron2-compatible module names."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        iou_thresholds: Tuple[float, float] = (0.4, 0.5),
        matcher_chunk_boxes: int = 256,
        loss: str = "focal",
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        star_gamma: float = 2.0,
        star_beta: float = 1.0,
        ohem_batch_size_per_image: int = 128,
        ohem_fg_fraction: float = -1.0,
        ohem_nms_thresh: float = 0.7,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        test_score_thresh: Union[float, Sequence[float]] = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        clip_boxes_before_nms: bool = False,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone: detectron2 backbone whose outputs include head_in_features.
            head: maps a list of features to (logits, deltas) lists, see FocalRetinaNetHead.
            head_in_features: backbone outputs fed to the head, e.g. ["p3", ..., "p7"].
            anchor_generator: detectron2 anchor generator over those features.
            box2box_transform: anchor <-> box delta parameterisation.
            num_classes: K, foreground classes.
            iou_thresholds: (low, high): background below low, foreground at or above high.
            matcher_chunk_boxes: boxes per IoU block in anchor assignment (bounds memory).
            loss: classification loss, "focal", "focal_star" or "ohem" (see config.py).
            focal_loss_alpha: FL's alpha in [0, 1], or -1 for none.
            focal_loss_gamma: FL's gamma >= 0 (0 is alpha-balanced CE).
            star_gamma, star_beta: FL*'s gamma > 0 and beta.
            ohem_batch_size_per_image: OHEM's anchors per image.
            ohem_fg_fraction: OHEM's largest foreground share, or -1 for none.
            ohem_nms_thresh: OHEM's NMS threshold over anchors.
            box_reg_loss_type: "smooth_l1" (beta 0 is L1) or "giou".
            smooth_l1_beta: smooth L1's beta.
            test_score_thresh: candidates need a score above this; one value for every level, or
                one per level of head_in_features (Detectron: 0.0 on its last level).
            test_topk_candidates: candidates kept per level.
            test_nms_thresh: per-class NMS IoU threshold.
            max_detections_per_image: detections kept per image.
            clip_boxes_before_nms: clip decoded boxes to the image before NMS.
            pixel_mean, pixel_std: input normalisation, one value per channel.
            input_format: "BGR" or "RGB", for visualisation.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        check_iou_thresholds(iou_thresholds, [0, -1, 1])
        if loss not in LOSS_NAMES:
            raise ValueError(f"MODEL.FOCAL_RETINANET.LOSS must be one of {LOSS_NAMES}, got {loss!r}")
        if loss == "focal_star":
            check_fl_star_args(star_gamma, star_beta)
            check_focal_loss_args(focal_loss_alpha, 0.0)
        else:
            check_focal_loss_args(focal_loss_alpha, focal_loss_gamma)
        if loss == "ohem":
            check_ohem_args(ohem_batch_size_per_image, ohem_fg_fraction, ohem_nms_thresh)
        if box_reg_loss_type not in BOX_LOSSES:
            raise ValueError(
                f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE must be one of {BOX_LOSSES}, "
                f"got {box_reg_loss_type!r}"
            )
        if matcher_chunk_boxes < 1:
            raise ValueError(
                f"MODEL.FOCAL_RETINANET.MATCHER_CHUNK_BOXES must be >= 1, got {matcher_chunk_boxes}"
            )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.iou_thresholds = tuple(iou_thresholds)
        self.matcher_chunk_boxes = matcher_chunk_boxes
        self.loss = loss
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.star_gamma = star_gamma
        self.star_beta = star_beta
        self.ohem_batch_size_per_image = ohem_batch_size_per_image
        self.ohem_fg_fraction = ohem_fg_fraction
        self.ohem_nms_thresh = ohem_nms_thresh
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        if isinstance(test_score_thresh, (int, float)):
            test_score_thresh = [float(test_score_thresh)] * len(head_in_features)
        if len(test_score_thresh) != len(head_in_features):
            raise ValueError(
                f"MODEL.FOCAL_RETINANET.LEVEL_SCORE_THRESH_TEST needs one threshold per level of "
                f"{list(head_in_features)}, got {list(test_score_thresh)}"
            )
        self.test_score_thresh = [float(t) for t in test_score_thresh]
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        missing = [f for f in cfg.MODEL.RETINANET.IN_FEATURES if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES has {missing}, which the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} does not produce (it has {sorted(backbone_shape)})"
            )
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        check_iou_thresholds(cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS)
        node = cfg.MODEL.FOCAL_RETINANET
        return {
            "backbone": backbone,
            "head": FocalRetinaNetHead(cfg, feature_shapes),
            "head_in_features": cfg.MODEL.RETINANET.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "iou_thresholds": tuple(cfg.MODEL.RETINANET.IOU_THRESHOLDS),
            "matcher_chunk_boxes": node.MATCHER_CHUNK_BOXES,
            "loss": node.LOSS,
            "focal_loss_alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "star_gamma": node.STAR_GAMMA,
            "star_beta": node.STAR_BETA,
            "ohem_batch_size_per_image": node.OHEM_BATCH_SIZE_PER_IMAGE,
            "ohem_fg_fraction": node.OHEM_FG_FRACTION,
            "ohem_nms_thresh": node.OHEM_NMS_THRESH,
            "box_reg_loss_type": cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
            "test_score_thresh": (
                list(node.LEVEL_SCORE_THRESH_TEST) or cfg.MODEL.RETINANET.SCORE_THRESH_TEST
            ),
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "clip_boxes_before_nms": node.CLIP_BOXES_BEFORE_NMS,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    # ---------------------------------------------------------------- training
    def forward_training(self, images: ImageList, features, predictions, gt_instances):
        logits, deltas = predictions
        anchors = Boxes.cat(self.anchor_generator(features))
        labels, matched_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(
            anchors, flatten_levels(logits, self.num_classes), flatten_levels(deltas, 4),
            labels, matched_boxes,
        )

    @torch.no_grad()
    def label_anchors(self, anchors: Boxes, gt_instances: List[Instances]):
        """Assign the R anchors of each of the N images (see assignment.py).

        Returns:
            labels: (N, R) int64 in {-1 ignore, 0..K-1 class, K background}.
            matched_boxes: (N, R, 4) the assigned box of each anchor (zeros where not foreground).
        """
        labels, matched_boxes = [], []
        for instances in gt_instances:
            # Non-finite boxes are dropped, the others clipped to the image, and zero-area or
            # inverted ones dropped, so that no regression target is NaN or inf.
            finite = torch.isfinite(instances.gt_boxes.tensor).all(dim=1)
            gt_boxes = Boxes(instances.gt_boxes.tensor[finite])
            gt_boxes.clip(instances.image_size)
            nonempty = gt_boxes.nonempty()
            boxes = gt_boxes.tensor[nonempty]
            classes = instances.gt_classes[finite][nonempty]
            image_labels = torch.full_like(anchors.tensor[:, 0], self.num_classes, dtype=torch.int64)
            image_boxes = torch.zeros_like(anchors.tensor)
            if boxes.shape[0] > 0:
                idxs, match = match_anchors(
                    boxes, anchors.tensor, *self.iou_thresholds, chunk=self.matcher_chunk_boxes
                )
                foreground = match == 1
                image_labels[foreground] = classes[idxs[foreground]]
                image_labels[match == -1] = -1
                image_boxes[foreground] = boxes[idxs[foreground]]
            labels.append(image_labels)
            matched_boxes.append(image_boxes)
        return torch.stack(labels), torch.stack(matched_boxes)

    def batch_normalizer(self, count: Tensor) -> Tensor:
        """``count`` summed over processes / world size, at least 1 in total: each process divides
        its loss sum by it, so that DDP's gradient average is the global sum over the global count.
        A float tensor; no host sync."""
        count = count.to(torch.float32)
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(count)
        return count.clamp(min=1.0) / world_size

    def box_losses(self, anchors: Tensor, deltas: Tensor, boxes: Tensor) -> Tensor:
        """(F,) box loss of each of F foreground anchors (F, 4) given deltas and matched boxes."""
        if self.box_reg_loss_type == "smooth_l1":
            target = self.box2box_transform.get_deltas(anchors, boxes)
            return smooth_l1_loss(deltas, target, beta=self.smooth_l1_beta, reduction="none").sum(dim=1)
        predicted = self.box2box_transform.apply_deltas(deltas, anchors)
        return giou_loss(predicted, boxes, reduction="none")

    def losses(
        self, anchors: Boxes, logits: Tensor, deltas: Tensor, labels: Tensor, matched_boxes: Tensor
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: R anchors of one image (the same for all images of the batch).
            logits: (N, R, K); deltas: (N, R, 4); labels: (N, R); matched_boxes: (N, R, 4).
        Returns:
            {"loss_cls", "loss_box_reg"}: scalars, sums divided by the batch's foreground count
            (the OHEM minibatch size for loss "ohem").
        """
        if self.loss == "ohem":
            return self.ohem_losses(anchors, logits, deltas, labels, matched_boxes)
        foreground = (labels >= 0) & (labels < self.num_classes)  # (N, R)
        normalizer = self.batch_normalizer(foreground.sum())
        flat_logits = logits.reshape(-1, self.num_classes)
        flat_labels = labels.reshape(-1)
        if self.loss == "focal":
            loss_cls = focal_loss_from_labels(
                flat_logits, flat_labels, self.focal_loss_alpha, self.focal_loss_gamma
            )
        else:
            loss_cls = focal_loss_star_from_labels(
                flat_logits, flat_labels, self.focal_loss_alpha, self.star_gamma, self.star_beta
            )
        fg_anchors = anchors.tensor.expand(labels.shape[0], -1, -1)[foreground]
        loss_box = self.box_losses(fg_anchors, deltas[foreground], matched_boxes[foreground]).sum()
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box / normalizer}

    def ohem_losses(
        self, anchors: Boxes, logits: Tensor, deltas: Tensor, labels: Tensor, matched_boxes: Tensor
    ) -> Dict[str, Tensor]:
        """Table 1(d)'s OHEM: the losses of the anchors ohem_select picks, over their number."""
        valid = labels >= 0
        foreground = valid & (labels < self.num_classes)
        classes = torch.arange(self.num_classes, device=labels.device)
        targets = (labels[..., None] == classes).to(logits.dtype)
        cls = sigmoid_focal_loss(logits, targets, self.focal_loss_alpha, self.focal_loss_gamma)
        cls = cls.sum(dim=-1) * valid  # (N, R)
        box = torch.zeros_like(cls)
        fg_anchors = anchors.tensor.expand(labels.shape[0], -1, -1)[foreground]
        box[foreground] = self.box_losses(fg_anchors, deltas[foreground], matched_boxes[foreground])
        selected = torch.zeros_like(valid)
        for i in range(labels.shape[0]):
            picked = ohem_select(
                (cls[i] + box[i]).detach(), anchors.tensor, labels[i], self.num_classes,
                self.ohem_batch_size_per_image, self.ohem_fg_fraction, self.ohem_nms_thresh,
            )
            selected[i, picked] = True
        normalizer = self.batch_normalizer(selected.sum())
        return {"loss_cls": cls[selected].sum() / normalizer, "loss_box_reg": box[selected].sum() / normalizer}

    # ---------------------------------------------------------------- inference
    def forward_inference(self, images: ImageList, features, predictions) -> List[Instances]:
        logits, deltas = predictions
        anchors = [a.tensor for a in self.anchor_generator(features)]
        # Per level, so that no level size is a Python constant in a traced (exported) model.
        scores = [flatten_levels([x], self.num_classes).sigmoid() for x in logits]
        deltas = [flatten_levels([x], 4) for x in deltas]
        return [
            self.inference_single_image(anchors, [s[i] for s in scores], [d[i] for d in deltas], size)
            for i, size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self, anchors: List[Tensor], scores: List[Tensor], deltas: List[Tensor], image_size
    ) -> Instances:
        """Detections of one image.

        Args:
            anchors, scores, deltas: per level, (Ri, 4) anchors, (Ri, K) probabilities, (Ri, 4).
            image_size: (H, W) of the input before padding.
        Returns:
            Instances with pred_boxes (D, 4), scores (D,), pred_classes (D,), D <= max detections.
        """
        num_classes = self.num_classes
        kept_scores, kept_classes, kept_anchors, kept_deltas = [], [], [], []
        for level_anchors, level_scores, level_deltas, thresh in zip(
            anchors, scores, deltas, self.test_score_thresh
        ):
            level_scores = level_scores.reshape(-1)
            candidates = torch.nonzero(level_scores > thresh).squeeze(1)
            top = level_scores[candidates].topk(topk_count(candidates, self.test_topk_candidates))
            flat_idxs = candidates[top.indices]
            anchor_idxs = flat_idxs // num_classes
            kept_scores.append(top.values)
            kept_classes.append(flat_idxs % num_classes)
            kept_anchors.append(level_anchors[anchor_idxs])
            kept_deltas.append(level_deltas[anchor_idxs])
        top_scores = cat(kept_scores)
        classes = cat(kept_classes)
        boxes = self.box2box_transform.apply_deltas(cat(kept_deltas), cat(kept_anchors))
        if self.clip_boxes_before_nms:
            clipped = Boxes(boxes)
            clipped.clip(image_size)
            boxes = clipped.tensor
        keep = batched_nms(boxes.float(), top_scores.float(), classes, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        return Instances(
            image_size, pred_boxes=Boxes(boxes[keep]), scores=top_scores[keep], pred_classes=classes[keep]
        )
