"""Anchors in the paper's terms (§4): octave base scale, scales per octave, aspect ratios.

On a level of stride ``s`` the anchor sizes are ``base * s * 2**(i / n)``, ``i = 0..n-1``. With
``base = 4``, ``n = 3``, strides 8..128 this is exactly detectron2's RetinaNet setting
``SIZES = [[x, x * 2**(1/3), x * 2**(2/3)] for x in [32, 64, 128, 256, 512]]``, without the
``!!python`` eval that setting needs in YAML.
"""
from typing import List

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator


def octave_anchor_sizes(strides: List[int], octave_base_scale: float, scales_per_octave: int):
    """Per-level anchor sizes (list of ``len(strides)`` lists of ``scales_per_octave`` floats)."""
    if octave_base_scale <= 0:
        raise ValueError(
            f"MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE must be > 0, got {octave_base_scale}"
        )
    if scales_per_octave < 1:
        raise ValueError(
            f"MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE must be >= 1, got {scales_per_octave}"
        )
    return [
        [octave_base_scale * stride * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        for stride in strides
    ]


@ANCHOR_GENERATOR_REGISTRY.register()
class OctaveAnchorGenerator(DefaultAnchorGenerator):
    """detectron2's anchor generator, configured by octave base scale and scales per octave.

    Output: for each level, ``Boxes`` of shape (Hi * Wi * A, 4), A = scales * aspect ratios,
    ordered location-major, then size, then aspect ratio (detectron2's order).
    """

    @configurable
    def __init__(
        self, *, strides, aspect_ratios, octave_base_scale=4.0, scales_per_octave=3, offset=0.5
    ):
        """
        Args:
            strides: stride of each input feature level.
            aspect_ratios: height / width ratios, one list for all levels or one per level.
            octave_base_scale: anchor size on a level, in units of its stride.
            scales_per_octave: number of sizes per level, 2**(i / n) apart.
            offset: anchor centre offset within a cell, in units of the stride (0.0 or 0.5).
        """
        super().__init__(
            sizes=octave_anchor_sizes(strides, octave_base_scale, scales_per_octave),
            aspect_ratios=aspect_ratios,
            strides=strides,
            offset=offset,
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "strides": [shape.stride for shape in input_shape],
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "octave_base_scale": cfg.MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE,
            "scales_per_octave": cfg.MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE,
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }
