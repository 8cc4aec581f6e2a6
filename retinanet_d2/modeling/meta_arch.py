"""``FocalRetinaNet``: the paper's one-stage detector as a detectron2 meta-architecture.

A drop-in for detectron2's ``RetinaNet``: the constructor takes RetinaNet's keyword arguments
(backbone, head, anchor generator, box transform, ``anchor_matcher``, ...), so any detectron2 config
that builds a RetinaNet builds this by naming it. What it adds: the classification loss as an
injected object (``classification_loss``: FL, FL* or OHEM, losses/dense.py; ``box_loss``: smooth L1 / L1,
GIoU, DIoU, CIoU, losses/box.py), normalised by the exact
foreground count of the batch (all-reduced, §3/§4) instead of detectron2's moving average; anchor
assignment over chunks of boxes (bounded memory); per-level score thresholds; optional clipping
before NMS (for converted models). Inference: per level, scores above the threshold, the top
TOPK_CANDIDATES_TEST, decode; then per-class NMS and at most DETECTIONS_PER_IMAGE detections.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..config import DEFAULTS, naming_config_keys, retinanet_node
from .assignment import match_anchors
from .float32_norm import keep_group_norms_in_float32
from .head import FocalRetinaNetHead
from .losses import DenseOutputs, FocalLoss, build_box_loss, build_classification_loss
from .precision import at_least_float32

def concat_levels(per_level: List[Tensor], dim: int) -> Tensor:
    """(N, A*dim, Hi, Wi) per level -> (N, sum(Hi*Wi*A), dim), detectron2's anchor order."""
    return torch.cat([permute_to_N_HWA_K(x, dim) for x in per_level], dim=1)


def topk_count(candidates: Tensor, k: int) -> int:
    """min(k, len(candidates)); a traced tensor while tracing, so that an exported model keeps the
    number of candidates dynamic instead of the traced input's (TorchScript skips that branch)."""
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        return torch.clamp(torch._shape_as_tensor(candidates)[0], max=k)
    return min(k, candidates.shape[0])


def check_iou_thresholds(thresholds, labels) -> None:
    """Raise ValueError naming MODEL.RETINANET.IOU_THRESHOLDS / IOU_LABELS unless they describe a
    Matcher: increasing thresholds in [0, 1], one label more than thresholds, labels in {-1, 0, 1}."""
    if list(thresholds) != sorted(thresholds) or not all(0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(
            f"MODEL.RETINANET.IOU_THRESHOLDS must increase within [0, 1], got {list(thresholds)}"
        )
    if len(labels) != len(thresholds) + 1 or not set(labels) <= {-1, 0, 1}:
        raise ValueError(
            f"MODEL.RETINANET.IOU_LABELS must be {len(thresholds) + 1} labels in {{-1, 0, 1}} "
            f"(one per IoU interval of IOU_THRESHOLDS), got {list(labels)}"
        )


def level_score_thresholds(test_score_thresh, head_in_features: List[str], matcher_chunk_boxes: int) -> List[float]:
    """One test score threshold per level of ``head_in_features`` (a single value is repeated);
    ValueError naming the argument when the count differs, or when matcher_chunk_boxes < 1."""
    if matcher_chunk_boxes < 1:
        raise ValueError(f"matcher_chunk_boxes must be >= 1, got {matcher_chunk_boxes}")
    if isinstance(test_score_thresh, (int, float)):
        test_score_thresh = [test_score_thresh] * len(head_in_features)
    if len(test_score_thresh) != len(head_in_features):
        raise ValueError(f"test_score_thresh needs one threshold per level of {list(head_in_features)}, "
                         f"got {list(test_score_thresh)}")
    return [float(t) for t in test_score_thresh]


# The config key of each argument that a module this meta-architecture builds may name in an error.
CONFIG_KEYS = {
    "prior_prob": "MODEL.RETINANET.PRIOR_PROB", "norm": "MODEL.RETINANET.NORM",
    "octave_base_scale": "MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE",
    "scales_per_octave": "MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE",
    "rounding": "MODEL.FOCAL_RETINANET.ANCHOR_ROUNDING", "box_reg_loss_type": "MODEL.RETINANET.BBOX_REG_LOSS_TYPE",
    "smooth_l1_beta": "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA",
    "matcher_chunk_boxes": "MODEL.FOCAL_RETINANET.MATCHER_CHUNK_BOXES",
    "test_score_thresh": "MODEL.FOCAL_RETINANET.LEVEL_SCORE_THRESH_TEST",
}


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(DenseDetector):
    """RetinaNet with the paper's normaliser and loss family; detectron2's module names and
    constructor arguments."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        test_score_thresh: Union[float, Sequence[float]] = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        vis_period: int = 0,
        input_format: str = "BGR",
        classification_loss: Optional[nn.Module] = None,
        box_loss: Optional[nn.Module] = None,
        matcher_chunk_boxes: int = DEFAULTS.MODEL.FOCAL_RETINANET.MATCHER_CHUNK_BOXES,
        clip_boxes_before_nms: bool = DEFAULTS.MODEL.FOCAL_RETINANET.CLIP_BOXES_BEFORE_NMS,
        channels_last: bool = DEFAULTS.MODEL.FOCAL_RETINANET.CHANNELS_LAST,
    ):
        """
        Args (detectron2 RetinaNet's, with its meanings and defaults: tested against its signature):
            backbone: detectron2 backbone whose outputs include head_in_features.
            head: maps a list of features to (logits, deltas) lists, see FocalRetinaNetHead.
            head_in_features: backbone outputs fed to the head, e.g. ["p3", ..., "p7"].
            anchor_generator: detectron2 anchor generator over those features.
            box2box_transform: anchor <-> box delta parameterisation.
            anchor_matcher: detectron2 Matcher; its thresholds, labels and low-quality setting
                decide the assignment (computed here over chunks of boxes).
            num_classes: K, foreground classes.
            focal_loss_alpha, focal_loss_gamma: FL's alpha and gamma when no classification_loss
                is given (with one, they must stay at their defaults: the object holds its own).
            smooth_l1_beta: smooth L1's beta (0: L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou" (when no box_loss is given).
            test_score_thresh: candidates need a score above this; one value for every level, or
                one per level of head_in_features (Detectron: 0.0 on its last level).
            test_topk_candidates: candidates kept per level.
            test_nms_thresh: per-class NMS IoU threshold.
            max_detections_per_image: detections kept per image.
            pixel_mean, pixel_std: input normalisation, one value per channel.
            vis_period: accepted for detectron2's signature; unused, as in detectron2's RetinaNet.
            input_format: "BGR" or "RGB", for visualisation.
        Args (this project's):
            classification_loss: a losses/dense.py loss object (FocalLoss, FocalLossStar, OhemLoss);
                default FocalLoss(alpha=focal_loss_alpha, gamma=focal_loss_gamma).
            box_loss: a losses/box.py object (SmoothL1BoxLoss, IoUBoxLoss); default the one of
                box_reg_loss_type and smooth_l1_beta (with one, they must stay at their defaults).
            matcher_chunk_boxes: boxes per IoU block in anchor assignment (bounds memory).
            clip_boxes_before_nms: clip decoded boxes to the image before NMS.
            channels_last: weights in the channels_last memory layout; convolutions with such
                weights return channels_last outputs (CPU and CUDA), so every activation after the
                stem keeps it; outputs as in the default layout.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        keep_group_norms_in_float32(self)  # under autocast (float32_norm.py); a no-op otherwise
        if classification_loss is not None and (focal_loss_alpha, focal_loss_gamma) != (0.25, 2.0):
            raise ValueError(
                f"focal_loss_alpha={focal_loss_alpha}, focal_loss_gamma={focal_loss_gamma} given together "
                f"with classification_loss={classification_loss!r}: set them on the loss object instead"
            )
        if not set(anchor_matcher.labels) <= {-1, 0, 1}:
            raise ValueError(f"anchor_matcher labels must be in {{-1, 0, 1}}, got {anchor_matcher.labels}")
        if box_loss is not None and (box_reg_loss_type, smooth_l1_beta) != ("smooth_l1", 0.0):
            raise ValueError(
                f"box_reg_loss_type={box_reg_loss_type!r}, smooth_l1_beta={smooth_l1_beta} given together "
                f"with box_loss={box_loss!r}: set them on the loss object instead"
            )
        test_score_thresh = level_score_thresholds(test_score_thresh, self.head_in_features, matcher_chunk_boxes)
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.classification_loss = classification_loss or FocalLoss(alpha=focal_loss_alpha, gamma=focal_loss_gamma)
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.box_loss = box_loss or build_box_loss(box_reg_loss_type, smooth_l1_beta)
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.vis_period = vis_period
        self.input_format = input_format
        self.matcher_chunk_boxes = matcher_chunk_boxes
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

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
        node = retinanet_node(cfg)
        score_thresh = list(node.LEVEL_SCORE_THRESH_TEST) or cfg.MODEL.RETINANET.SCORE_THRESH_TEST
        with naming_config_keys(CONFIG_KEYS):  # what __init__ checks again, named by config key here
            head = FocalRetinaNetHead(cfg, feature_shapes)
            anchor_generator = build_anchor_generator(cfg, feature_shapes)
            build_box_loss(cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE, cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA)
            level_score_thresholds(score_thresh, cfg.MODEL.RETINANET.IN_FEATURES, node.MATCHER_CHUNK_BOXES)
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": cfg.MODEL.RETINANET.IN_FEATURES,
            "anchor_generator": anchor_generator,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(
                cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS, allow_low_quality_matches=True
            ),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "smooth_l1_beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": score_thresh,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "classification_loss": build_classification_loss(cfg),  # FOCAL_LOSS_ALPHA/GAMMA, STAR_*, OHEM_*
            "matcher_chunk_boxes": node.MATCHER_CHUNK_BOXES,
            "clip_boxes_before_nms": node.CLIP_BOXES_BEFORE_NMS,
            "channels_last": node.CHANNELS_LAST,
        }

    # ---------------------------------------------------------------- training
    def dense_outputs(self, batched_inputs: List[Dict]) -> DenseOutputs:
        """The dense predictions of a batch of training inputs (DatasetMapper's format, with
        "instances") and their assignment: the step before the losses, for analyses and tests."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        return self.label_dense_outputs(features, self.head(features), gt_instances)

    def label_dense_outputs(self, features: List[Tensor], predictions, gt_instances: List[Instances]) -> DenseOutputs:
        """DenseOutputs of the head's ``predictions`` (per-level logits and deltas) on ``features``.
        Predictions are upcast to float32 (under autocast), so that losses are float32."""
        logits, deltas = predictions
        anchors = Boxes.cat(self.anchor_generator(features)).tensor
        labels, matched_boxes, far_negatives = self.label_anchors(anchors, gt_instances)
        return DenseOutputs(
            anchors,
            at_least_float32(concat_levels(logits, self.num_classes)),
            at_least_float32(concat_levels(deltas, 4)),
            labels,
            matched_boxes,
            far_negatives,
        )

    def forward_training(self, images: ImageList, features, predictions, gt_instances):
        return self.losses(self.label_dense_outputs(features, predictions, gt_instances))

    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, gt_instances: List[Instances]) -> Tuple[Tensor, Tensor, Tensor]:
        """Assign the R anchors (R, 4) of each of the N images (see assignment.py).

        Returns:
            labels: (N, R) int64 in {-1 ignore, 0..K-1 class, K background}.
            matched_boxes: (N, R, 4) the assigned box of each anchor (zeros where not foreground).
            far_negatives: (N, R) bool, background anchors whose IoU with every box is 0.
        """
        matcher = self.anchor_matcher
        labels, matched_boxes, far_negatives = [], [], []
        for instances in gt_instances:
            # Non-finite boxes are dropped, the others clipped to the image, and zero-area or
            # inverted ones dropped, so that no regression target is NaN or inf.
            finite = torch.isfinite(instances.gt_boxes.tensor).all(dim=1)
            gt_boxes = Boxes(instances.gt_boxes.tensor[finite])
            gt_boxes.clip(instances.image_size)
            nonempty = gt_boxes.nonempty()
            boxes = gt_boxes.tensor[nonempty]
            classes = instances.gt_classes[finite][nonempty]
            image_labels = torch.full_like(anchors[:, 0], self.num_classes, dtype=torch.int64)
            image_boxes = torch.zeros_like(anchors)
            image_far = torch.ones_like(image_labels, dtype=torch.bool)
            if boxes.shape[0] > 0:
                idxs, match, best_iou = match_anchors(
                    boxes, anchors, matcher.thresholds[1:-1], matcher.labels,
                    matcher.allow_low_quality_matches, self.matcher_chunk_boxes,
                )
                foreground = match == 1
                image_labels[foreground] = classes[idxs[foreground]]
                image_labels[match == -1] = -1
                image_boxes[foreground] = boxes[idxs[foreground]]
                image_far = (best_iou == 0) & (image_labels == self.num_classes)
            labels.append(image_labels)
            matched_boxes.append(image_boxes)
            far_negatives.append(image_far)
        return torch.stack(labels), torch.stack(matched_boxes), torch.stack(far_negatives)

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
        return self.box_loss(anchors, deltas, boxes, self.box2box_transform)

    def losses(self, outputs: DenseOutputs) -> Dict[str, Tensor]:
        """{"loss_cls", "loss_box_reg"}: scalars, the classification loss's sums divided by its
        count (the batch's foreground anchors; OHEM's selected anchors), all-reduced."""
        foreground = (outputs.labels >= 0) & (outputs.labels < self.num_classes)  # (N, R)
        fg_anchors = outputs.anchors.expand(outputs.labels.shape[0], -1, -1)[foreground]
        fg_box_losses = self.box_losses(fg_anchors, outputs.deltas[foreground], outputs.matched_boxes[foreground])
        sums = self.classification_loss(outputs, foreground, fg_box_losses)
        if sums.far_cls is not None:  # the loss weighs far negatives: log their share of it
            get_event_storage().put_scalar("far_negative_loss_share", float(sums.far_cls / sums.cls.detach()))
        normalizer = self.batch_normalizer(sums.count)
        return {"loss_cls": sums.cls / normalizer, "loss_box_reg": sums.box / normalizer}

    # ---------------------------------------------------------------- inference
    @torch.jit.unused  # for the Python wrappers (TTA, tiles); a scripted model uses forward
    def detect_unscaled(self, images: List[Tensor]) -> List[Instances]:
        """Detections of (3, H, W) images (the model's input format and scale) in their own pixels,
        before detector_postprocess: DenseDetector.forward's inference without its last step."""
        batch = self.preprocess_image([{"image": image} for image in images])
        features = self.backbone(batch.tensor)
        features = [features[f] for f in self.head_in_features]
        return self.forward_inference(batch, features, self.head(features))

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: Tuple[List[Tensor], List[Tensor]]
    ) -> List[Instances]:
        logits, deltas = predictions
        anchors = [a.tensor for a in self.anchor_generator(features)]
        # Per level, so that no level size is a Python constant in a traced (exported) model;
        # float32 scores and boxes also under autocast.
        scores = [at_least_float32(permute_to_N_HWA_K(x, self.num_classes)).sigmoid() for x in logits]
        deltas = [at_least_float32(permute_to_N_HWA_K(x, 4)) for x in deltas]
        return [
            self.inference_single_image(anchors, [s[i] for s in scores], [d[i] for d in deltas], size)
            for i, size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self, anchors: List[Tensor], scores: List[Tensor], deltas: List[Tensor], image_size: Tuple[int, int]
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
