"""Online hard example mining for the dense detector, the paper's Table 1(d) baseline.

Every non-ignored anchor is scored by its loss; NMS over the anchor boxes (scores = losses) removes
near-duplicates; the B highest-loss anchors of each image form the minibatch (plain OHEM), or at most
B * fg_fraction foreground anchors plus background anchors up to B (OHEM 1:3 with fg_fraction 0.25).
For speed, NMS runs on the 32 * B highest-loss anchors only, and (with the same result) on fewer
while those already decide the minibatch.
"""
import torch
from torch import Tensor

from detectron2.layers import nms

CANDIDATES_PER_SLOT = 32
FIRST_CANDIDATES_PER_SLOT = 2  # NMS first runs on this many per slot, doubled while undecided


def check_ohem_args(batch_size: int, fg_fraction: float, nms_thresh: float) -> None:
    """Raise ValueError naming the OHEM argument that is out of range."""
    if batch_size <= 0:
        raise ValueError(f"OHEM batch_size_per_image must be > 0, got {batch_size}")
    if not (fg_fraction == -1 or 0.0 < fg_fraction <= 1.0):
        raise ValueError(
            f"OHEM fg_fraction must be in (0, 1] or -1 (no ratio), got {fg_fraction}"
        )
    if not 0.0 < nms_thresh <= 1.0:
        raise ValueError(f"OHEM nms_thresh must be in (0, 1], got {nms_thresh}")


@torch.no_grad()
def ohem_select(
    losses: Tensor,
    boxes: Tensor,
    labels: Tensor,
    num_classes: int,
    batch_size: int,
    fg_fraction: float,
    nms_thresh: float,
) -> Tensor:
    """Indices (<= batch_size,) of the anchors of one image that form its OHEM minibatch.

    Args:
        losses: (R,) loss of each anchor; boxes: (R, 4) anchor boxes;
        labels: (R,) in {-1 ignore, 0..K-1 class, K background}.
        num_classes: K.
        batch_size: B, anchors kept per image.
        fg_fraction: -1 for plain OHEM, else the largest foreground share of B.
        nms_thresh: IoU above which a lower-loss anchor is suppressed.
    """
    candidates = torch.nonzero(labels >= 0).squeeze(1)
    order = candidates[losses[candidates].topk(min(len(candidates), CANDIDATES_PER_SLOT * batch_size)).indices]
    is_fg = labels[order] < num_classes
    last_fg = int(torch.nonzero(is_fg).max()) + 1 if bool(is_fg.any()) else 0
    # NMS decides an anchor by higher-loss anchors only, so NMS over the loss order's first `size`
    # anchors keeps exactly the full NMS's survivors among them: grow `size` until they decide the pick.
    size = FIRST_CANDIDATES_PER_SLOT * batch_size
    while True:
        prefix = order[:size]
        kept = prefix[nms(boxes[prefix].float(), losses[prefix].float(), nms_thresh)]
        if fg_fraction == -1:
            if len(kept) >= batch_size or size >= len(order):
                return kept[:batch_size]
        else:
            quota, kept_fg = int(batch_size * fg_fraction), labels[kept] < num_classes
            foreground = kept[kept_fg][:quota]
            background = kept[~kept_fg][: batch_size - len(foreground)]
            fg_decided = len(foreground) == quota or size >= last_fg
            if (fg_decided and len(background) == batch_size - len(foreground)) or size >= len(order):
                return torch.cat([foreground, background])
        size *= 2
