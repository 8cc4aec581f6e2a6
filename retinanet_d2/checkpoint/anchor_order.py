"""Reordering the anchors of a converted predictor into detectron2's order.

A predictor conv's output channels are A blocks of ``per_anchor`` channels (K class logits or 4 box
deltas), one block per anchor of a location. detectron2 orders the A anchors size-major with aspect
ratios (0.5, 1, 2) inside each size; torchvision orders them ratio-major, Detectron size-major with
ratios (1, 2, 0.5).
"""
from typing import List, Sequence

import numpy as np

# detectron2's aspect ratios (height / width), in the order of its configs and of the converters' output.
DETECTRON2_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def source_anchor_indices(
    num_anchors: int, source_ratios: Sequence[float], size_major: bool
) -> List[int]:
    """For each anchor in detectron2's order, its index in the source's order.

    Args:
        num_anchors: A, anchors per location (sizes x len(source_ratios)).
        source_ratios: the source's aspect ratios in its order, a permutation of (0.5, 1, 2).
        size_major: True if the source enumerates ratios inside each size, False if sizes inside
            each ratio.
    """
    if sorted(source_ratios) != sorted(DETECTRON2_ASPECT_RATIOS) or num_anchors % len(source_ratios):
        raise ValueError(
            f"expected {len(DETECTRON2_ASPECT_RATIOS)} aspect ratios {DETECTRON2_ASPECT_RATIOS} per "
            f"anchor size, got {num_anchors} anchors per location with ratios {tuple(source_ratios)}"
        )
    num_ratios = len(source_ratios)
    num_sizes = num_anchors // num_ratios
    order = []
    for s in range(num_sizes):
        for ratio in DETECTRON2_ASPECT_RATIOS:
            r = source_ratios.index(ratio)
            order.append(s * num_ratios + r if size_major else r * num_sizes + s)
    return order


def reorder_anchor_blocks(tensor, order: List[int], per_anchor: int):
    """(A * per_anchor, ...) weight or bias -> the same with block i taken from block order[i].

    Works on numpy arrays and torch tensors alike.
    """
    channels = np.concatenate([np.arange(i * per_anchor, (i + 1) * per_anchor) for i in order])
    return tensor[channels]
