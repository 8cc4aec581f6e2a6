"""Anchor assignment (§4): IoU >= 0.5 -> foreground, < 0.4 -> background, in between -> ignored,
plus each box's highest-IoU anchors ("low-quality matches"). The rule of detectron2's ``Matcher``
(any thresholds and labels, low-quality matches optional), computed over chunks of boxes so that
memory stays O(chunk x R) for images with thousands of boxes.

One deliberate difference: a box whose best IoU with every anchor is 0 (e.g. a degenerate box) gets
no low-quality matches; detectron2's ``Matcher`` would mark every anchor as its foreground.
"""
from typing import Iterator, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.structures import Boxes, pairwise_iou


def _iou_chunks(gt_boxes: Tensor, anchors: Tensor, chunk: int) -> Iterator[Tuple[int, Tensor]]:
    """Yield (first box index, IoU of boxes [i, i + chunk) with all anchors: (g, R))."""
    anchor_boxes = Boxes(anchors)
    for start in range(0, gt_boxes.shape[0], chunk):
        yield start, pairwise_iou(Boxes(gt_boxes[start : start + chunk]), anchor_boxes)


@torch.no_grad()
def match_anchors(
    gt_boxes: Tensor,
    anchors: Tensor,
    thresholds: Sequence[float],
    labels: Sequence[int],
    low_quality_matches: bool,
    chunk: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Match R anchors to G >= 1 ground-truth boxes.

    Args:
        gt_boxes: (G, 4) XYXY.
        anchors: (R, 4) XYXY.
        thresholds: T increasing IoU thresholds (the paper's [0.4, 0.5]).
        labels: T + 1 labels in {-1, 0, 1}, one per IoU interval [-inf, t1), [t1, t2), ..., [tT, inf)
            (the paper's [0, -1, 1]).
        low_quality_matches: also mark each box's highest-IoU anchors as foreground.
        chunk: boxes per IoU block.

    Returns:
        matched_idxs: (R,) int64, index of the highest-IoU box of each anchor.
        match_labels: (R,) int8 in {-1 ignore, 0 background, 1 foreground}.
        best_iou: (R,) the highest IoU of each anchor with any box (0: it overlaps none).
    """
    num_anchors = anchors.shape[0]
    best_iou = anchors.new_full((num_anchors,), -1.0)
    matched_idxs = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
    best_per_box = []
    kept_blocks = []  # the IoU blocks, kept only when there is one (no second pass needed)
    for start, iou in _iou_chunks(gt_boxes, anchors, chunk):
        values, idxs = iou.max(dim=0)
        better = values > best_iou
        best_iou = torch.where(better, values, best_iou)
        matched_idxs = torch.where(better, idxs + start, matched_idxs)
        best_per_box.append(iou.max(dim=1).values)
        if start == 0 and gt_boxes.shape[0] <= chunk:
            kept_blocks.append((start, iou))

    match_labels = torch.full((num_anchors,), labels[-1], dtype=torch.int8, device=anchors.device)
    for threshold, label in reversed(list(zip(thresholds, labels[:-1]))):
        match_labels[best_iou < threshold] = label
    if low_quality_matches:
        best_per_box = torch.cat(best_per_box)
        blocks = kept_blocks or _iou_chunks(gt_boxes, anchors, chunk)
        for start, iou in blocks:
            best = best_per_box[start : start + iou.shape[0], None]
            is_best = (iou == best) & (best > 0)
            match_labels[is_best.any(dim=0)] = 1
    return matched_idxs, match_labels, best_iou
