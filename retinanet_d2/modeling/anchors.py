"""Anchors in the paper's terms (§4): octave base scale, scales per octave, aspect ratios.

On a level of stride ``s`` the anchor sizes are ``base * s * 2**(i / n)``, ``i = 0..n-1``. With
``base = 4``, ``n = 3``, strides 8..128 this is exactly detectron2's RetinaNet setting
``SIZES = [[x, x * 2**(1/3), x * 2**(2/3)] for x in [32, 64, 128, 256, 512]]``, without the
``!!python`` eval that setting needs in YAML.

Models converted from other projects were trained with rounded anchors; ``rounding`` reproduces
them exactly: "torchvision" (sizes truncated to integers, cell-anchor corners rounded) and
"detectron" (width and height rounded at the level's stride, then scaled to the size).
"""
import math
from typing import List

import torch

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, BufferList, DefaultAnchorGenerator

from ..config import DEFAULTS, retinanet_node

_OURS = DEFAULTS.MODEL.FOCAL_RETINANET
# Values accepted by MODEL.FOCAL_RETINANET.ANCHOR_ROUNDING.
ANCHOR_ROUNDINGS = ("", "torchvision", "detectron")


def octave_anchor_sizes(strides: List[int], octave_base_scale: float, scales_per_octave: int):
    """Per-level anchor sizes (list of ``len(strides)`` lists of ``scales_per_octave`` floats)."""
    if octave_base_scale <= 0:
        raise ValueError(f"octave_base_scale must be > 0, got {octave_base_scale}")
    if scales_per_octave < 1:
        raise ValueError(f"scales_per_octave must be >= 1, got {scales_per_octave}")
    return [
        [octave_base_scale * stride * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        for stride in strides
    ]


def rounded_cell_anchors(sizes, aspect_ratios, stride: int, rounding: str) -> torch.Tensor:
    """(len(sizes) * len(aspect_ratios), 4) XYXY cell anchors centred at 0, size-major (detectron2's
    order), rounded as ``rounding`` says (see the module docstring); ratio = height / width.

    "torchvision": corners round(+-w/2), round(+-h/2) of w = int(size) / sqrt(ratio),
    h = int(size) * sqrt(ratio), in float32 as torchvision computes them.
    "detectron": w0 = round(sqrt(stride**2 / ratio)), h0 = round(w0 * ratio) (half to even), then
    w = w0 * size / stride, h = h0 * size / stride.
    """
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            if rounding == "torchvision":
                h_ratio = torch.sqrt(torch.tensor(ratio, dtype=torch.float32))
                w = (1 / h_ratio) * float(int(size))
                h = h_ratio * float(int(size))
                anchors.append(torch.round(torch.stack([-w, -h, w, h]) / 2).tolist())
            else:
                w0 = round(math.sqrt(stride * stride / ratio))
                h0 = round(w0 * ratio)
                w, h = w0 * size / stride, h0 * size / stride
                anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(anchors, dtype=torch.float32)


@ANCHOR_GENERATOR_REGISTRY.register()
class OctaveAnchorGenerator(DefaultAnchorGenerator):
    """detectron2's anchor generator, configured by octave base scale and scales per octave.

    Output: for each level, ``Boxes`` of shape (Hi * Wi * A, 4), A = scales * aspect ratios,
    ordered location-major, then size, then aspect ratio (detectron2's order).
    """

    @configurable
    def __init__(
        self,
        *,
        strides,
        aspect_ratios,
        octave_base_scale=_OURS.OCTAVE_BASE_SCALE,
        scales_per_octave=_OURS.SCALES_PER_OCTAVE,
        offset=DEFAULTS.MODEL.ANCHOR_GENERATOR.OFFSET,
        rounding=_OURS.ANCHOR_ROUNDING,
    ):
        """
        Args:
            strides: stride of each input feature level.
            aspect_ratios: height / width ratios, one list for all levels or one per level.
            octave_base_scale: anchor size on a level, in units of its stride.
            scales_per_octave: number of sizes per level, 2**(i / n) apart.
            offset: anchor centre offset within a cell, in units of the stride (0.0 or 0.5).
            rounding: "" (exact sizes), "torchvision" or "detectron" (see rounded_cell_anchors).
        """
        if rounding not in ANCHOR_ROUNDINGS:
            raise ValueError(
                f"rounding must be one of {ANCHOR_ROUNDINGS}, got {rounding!r}"
            )
        self.rounding = rounding  # before detectron2's __init__, which calls _calculate_anchors
        sizes = octave_anchor_sizes(strides, octave_base_scale, scales_per_octave)
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios, strides=strides, offset=offset)

    def _calculate_anchors(self, sizes, aspect_ratios) -> BufferList:
        """detectron2's cell anchors of each level (sizes and ratios broadcast per level), rounded as
        ``self.rounding`` says at the level's stride (rounded_cell_anchors)."""
        if not self.rounding:
            return super()._calculate_anchors(sizes, aspect_ratios)
        return BufferList([rounded_cell_anchors(level_sizes, level_ratios, stride, self.rounding)
                           for level_sizes, level_ratios, stride in zip(sizes, aspect_ratios, self.strides)])

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        node = retinanet_node(cfg)
        strides = [shape.stride for shape in input_shape]
        sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
        octave_sizes = octave_anchor_sizes(strides, node.OCTAVE_BASE_SCALE, node.SCALES_PER_OCTAVE)
        if sizes != DEFAULTS.MODEL.ANCHOR_GENERATOR.SIZES and not _same_sizes(sizes, octave_sizes):
            raise ValueError(
                f"MODEL.ANCHOR_GENERATOR.SIZES is set to {sizes}, but OctaveAnchorGenerator takes its "
                f"sizes from MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE and SCALES_PER_OCTAVE "
                f"({[[round(s, 1) for s in level] for level in octave_sizes]}); set those, or use "
                'MODEL.ANCHOR_GENERATOR.NAME "DefaultAnchorGenerator" for explicit sizes'
            )
        return {
            "strides": strides,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "octave_base_scale": node.OCTAVE_BASE_SCALE,
            "scales_per_octave": node.SCALES_PER_OCTAVE,
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
            "rounding": node.ANCHOR_ROUNDING,
        }


def _same_sizes(a, b) -> bool:
    """Whether two per-level size lists are equal up to float rounding."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(abs(u - v) <= 1e-6 * v for u, v in zip(x, y)) for x, y in zip(a, b)
    )
