"""Do the anchors fit the boxes? A dataset measured against a config's anchors before training.

Boxes are scaled as training resizes the images (the middle of ``INPUT.MIN_SIZE_TRAIN``, capped by
``MAX_SIZE_TRAIN``); anchors are the config's anchor generator on each image's padded size. For every
box: its best IoU with any anchor (a box below the foreground threshold, ``MODEL.RETINANET.IOU_THRESHOLDS``'s
upper value, trains only through a low-quality match) and its foreground anchors; for every image the
matcher's labels, whose counts give the imbalance the paper is about. A suggestion searches the
paper's anchor terms (octave base scale, aspect ratios) for the setting that lets most boxes reach the
threshold.
"""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from detectron2.data.detection_utils import transform_instance_annotations
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou

from ..config import retinanet_node
from ..modeling.anchors import OctaveAnchorGenerator
from .figures import new_figure, save_figure

SIZE_BINS = (0, 16, 32, 64, 128, 256, 512, math.inf)  # box sqrt(area) in training pixels
BASE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # octave base scales the suggestion tries
# COCO at 800 px, for comparison (the paper, §2): ~1000 non-ignored anchors per foreground anchor;
# with 80 classes about 80,000 negative anchor-class pairs per positive one.
COCO_IMBALANCE = {"anchors_per_foreground": 1000, "negatives_per_positive_pair": 80000}


def training_boxes(cfg, records: Sequence[dict]) -> List[Tuple[Tuple[int, int], torch.Tensor]]:
    """((height, width), (M, 4) XYXY boxes) of each record as training sees it, crowd boxes left out."""
    short = sorted(cfg.INPUT.MIN_SIZE_TRAIN)[len(cfg.INPUT.MIN_SIZE_TRAIN) // 2]
    resize = ResizeShortestEdge(short, cfg.INPUT.MAX_SIZE_TRAIN)
    images = []
    for record in records:
        image = np.zeros((record["height"], record["width"], 1), dtype=np.uint8)
        transform = resize.get_transform(image)
        boxes = [
            transform_instance_annotations(dict(a), [transform], (record["height"], record["width"]))["bbox"]
            for a in record.get("annotations", []) if not a.get("iscrowd", 0)
        ]
        size = transform.apply_image(image).shape[:2]
        images.append((size, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)))
    return images


class AnchorGrid:
    """The anchors of a config on images of any size, with the matcher that labels them."""

    def __init__(self, *, strides: List[int], size_divisibility: int, generator, iou_thresholds, iou_labels):
        """
        Args:
            strides: stride of each level the head sees.
            size_divisibility: the backbone's padding multiple.
            generator: an anchor generator over those levels (called on feature maps).
            iou_thresholds, iou_labels: the matcher's (MODEL.RETINANET.IOU_THRESHOLDS / IOU_LABELS).
        """
        self.strides, self.size_divisibility, self.generator = strides, size_divisibility, generator
        self.iou_thresholds, self.iou_labels = list(iou_thresholds), list(iou_labels)
        self.foreground_iou = iou_thresholds[-1]
        self.matcher = Matcher(iou_thresholds, iou_labels, allow_low_quality_matches=True)

    @classmethod
    def from_config(cls, cfg) -> "AnchorGrid":
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        features = [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        return cls(strides=[f.stride for f in features], size_divisibility=backbone.size_divisibility,
                   generator=build_anchor_generator(cfg, features), iou_thresholds=cfg.MODEL.RETINANET.IOU_THRESHOLDS,
                   iou_labels=cfg.MODEL.RETINANET.IOU_LABELS)

    def with_generator(self, generator) -> "AnchorGrid":
        return AnchorGrid(strides=self.strides, size_divisibility=self.size_divisibility, generator=generator,
                          iou_thresholds=self.iou_thresholds, iou_labels=self.iou_labels)

    def anchors(self, size: Tuple[int, int]) -> Boxes:
        """(R, 4) anchors of every level for an image of ``size`` (height, width), padded as the model pads it."""
        div = max(self.size_divisibility, 1)
        height, width = (math.ceil(s / div) * div for s in size)
        grids = [torch.zeros(1, 1, math.ceil(height / s), math.ceil(width / s)) for s in self.strides]
        return Boxes.cat(self.generator(grids))

    def best_iou(self, images) -> torch.Tensor:
        """(M,) best IoU of every box of ``images`` with any anchor."""
        best = [pairwise_iou(Boxes(b), self.anchors(size)).max(dim=1).values for size, b in images if len(b)]
        return torch.cat(best) if best else torch.zeros(0)

    def cell_sizes(self) -> List[List[float]]:
        """Per level, the sizes (sqrt of the area) of its cell anchors."""
        return [sorted({round(float(a), 1) for a in Boxes(cell).area().sqrt()}) for cell in self.generator.cell_anchors]


def measure(grid: AnchorGrid, images, num_classes: int) -> Dict:
    """The fit of ``grid`` to ``images`` (training_boxes' output): per box best IoU and foreground
    anchors, per image the matcher's labels; summarised."""
    best, foreground_per_box, sizes, ratios = [], [], [], []
    anchors_total = valid = foreground = 0
    for size, boxes in images:
        anchors = grid.anchors(size)
        anchors_total += len(anchors)
        if len(boxes) == 0:
            valid += len(anchors)  # an image without boxes: every anchor is background
            continue
        iou = pairwise_iou(Boxes(boxes), anchors)  # (M, R)
        best.append(iou.max(dim=1).values)
        foreground_per_box.append((iou >= grid.foreground_iou).sum(dim=1))
        _, labels = grid.matcher(iou)
        valid += int((labels >= 0).sum())
        foreground += int((labels == 1).sum())
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
        sizes.append(wh.prod(dim=1).sqrt())
        ratios.append(wh[:, 1] / wh[:, 0])
    best = torch.cat(best) if best else torch.zeros(0)
    fg_per_box = torch.cat(foreground_per_box) if foreground_per_box else torch.zeros(0, dtype=torch.long)
    sizes = torch.cat(sizes) if sizes else torch.zeros(0)
    ratios = torch.cat(ratios) if ratios else torch.zeros(0)
    below = best < grid.foreground_iou
    by_size = {}
    for low, high in zip(SIZE_BINS[:-1], SIZE_BINS[1:]):
        in_bin = (sizes >= low) & (sizes < high)
        if in_bin.any():
            by_size[f"{low}-{high}"] = {"boxes": int(in_bin.sum()), "below_threshold": float(below[in_bin].float().mean())}
    pairs = valid * num_classes - foreground
    return {
        "images": len(images),
        "boxes": int(len(best)),
        "foreground_iou": grid.foreground_iou,
        "box_size_percentiles": _percentiles(sizes),
        "box_aspect_ratio_percentiles": _percentiles(ratios),
        "anchor_sizes_per_level": grid.cell_sizes(),
        "best_iou_percentiles": _percentiles(best),
        "share_below_threshold": float(below.float().mean()) if len(best) else 0.0,
        "below_threshold_by_size": by_size,
        "foreground_anchors_per_box_mean": float(fg_per_box.float().mean()) if len(best) else 0.0,
        "anchors_per_image": anchors_total / max(len(images), 1),
        "anchors_per_foreground": valid / foreground if foreground else math.inf,
        "negatives_per_positive_pair": pairs / foreground if foreground else math.inf,
        "coco_for_comparison": COCO_IMBALANCE,
        "best_iou": best.tolist(),
        "box_sizes": sizes.tolist(),
    }


def _percentiles(values: torch.Tensor) -> Dict[str, float]:
    if len(values) == 0:
        return {}
    q = torch.quantile(values.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.double))
    return {name: round(float(v), 3) for name, v in zip(("p5", "p25", "p50", "p75", "p95"), q)}


def suggest_anchors(cfg, images, base: AnchorGrid) -> Dict:
    """The paper-terms anchor setting (octave base scale from BASE_SCALES, the config's scales per
    octave, its aspect ratios or the boxes' 10th / 50th / 90th percentile ratios) under which most
    boxes reach the foreground IoU; ties go to the higher mean best IoU. Returns the setting, its
    share below the threshold and mean best IoU, and the config lines that select it."""
    ratios = _box_ratios(images)
    ratio_sets = [list(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0])]
    if ratios and ratios not in ratio_sets:
        ratio_sets.append(ratios)
    scales_per_octave = retinanet_node(cfg).SCALES_PER_OCTAVE
    candidates = []
    for scale in BASE_SCALES:
        for aspect_ratios in ratio_sets:
            generator = OctaveAnchorGenerator(strides=base.strides, aspect_ratios=[aspect_ratios], octave_base_scale=scale,
                                              scales_per_octave=scales_per_octave, offset=cfg.MODEL.ANCHOR_GENERATOR.OFFSET)
            best = base.with_generator(generator).best_iou(images)
            below = float((best < base.foreground_iou).float().mean())
            candidates.append((below, -float(best.mean()), scale, aspect_ratios))
    below, neg_mean, scale, aspect_ratios = min(candidates, key=lambda c: (c[0], c[1]))
    lines = [
        'MODEL.ANCHOR_GENERATOR.NAME: "OctaveAnchorGenerator"',
        f"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS: [{aspect_ratios}]",
        f"MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE: {scale}",
        f"MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE: {scales_per_octave}",
    ]
    return {"octave_base_scale": scale, "scales_per_octave": scales_per_octave, "aspect_ratios": aspect_ratios,
            "share_below_threshold": below, "mean_best_iou": -neg_mean, "config_lines": lines}


def _box_ratios(images) -> List[float]:
    """The boxes' 10th, 50th and 90th percentile aspect ratios (height / width), rounded to 2 digits."""
    wh = torch.cat([(b[:, 2:] - b[:, :2]) for _, b in images if len(b)]) if images else torch.zeros(0, 2)
    if len(wh) == 0:
        return []
    ratios = (wh[:, 1] / wh[:, 0].clamp(min=1e-6)).double()
    q = torch.quantile(ratios, torch.tensor([0.1, 0.5, 0.9], dtype=torch.double))
    return sorted({round(float(v), 2) for v in q})


def plot_fit(report: Dict, path: str) -> None:
    """Two panels: the boxes' sizes against each level's anchor sizes, and their best IoU against the
    foreground threshold (PNG at ``path``)."""
    figure, (sizes, ious) = new_figure(1, 2, figsize=(11, 4))
    box_sizes = [s for s in report["box_sizes"] if s > 0]
    if box_sizes:
        bins = np.geomspace(max(min(box_sizes), 1.0) / 1.2, max(box_sizes) * 1.2, 40)
        sizes.hist(box_sizes, bins=bins, color="tab:blue")
    for level, level_sizes in enumerate(report["anchor_sizes_per_level"]):
        for size in level_sizes:
            sizes.axvline(size, color=f"C{level + 1}", lw=1, alpha=0.8)
    sizes.set_xscale("log")
    sizes.set(xlabel="box size sqrt(w h), training pixels (lines: anchor sizes, a colour per level)", ylabel="boxes")
    ious.hist(report["best_iou"], bins=np.linspace(0, 1, 41), color="tab:blue")
    ious.axvline(report["foreground_iou"], color="tab:red", lw=2)
    ious.set(xlabel=f"best IoU with any anchor ({report['share_below_threshold']:.1%} below {report['foreground_iou']})",
             ylabel="boxes")
    save_figure(figure, path, dpi=110)
