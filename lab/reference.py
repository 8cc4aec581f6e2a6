"""detectron2's own RetinaNet as the reference FocalRetinaNet is measured against (the benchmark, the
equivalence tests): the same model from the same config, with detectron2's modules."""
from retinanet_d2.modeling.anchors import octave_anchor_sizes


def detectron2_retinanet_cfg(cfg):
    """The same model as ``cfg`` (a P3-P7 FocalRetinaNet config) for detectron2's built-in RetinaNet."""
    ref_cfg = cfg.clone()
    ref_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    ref_cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    ref_cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    ref_cfg.MODEL.ANCHOR_GENERATOR.SIZES = octave_anchor_sizes(
        [8, 16, 32, 64, 128],
        cfg.MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE,
        cfg.MODEL.FOCAL_RETINANET.SCALES_PER_OCTAVE,
    )
    return ref_cfg
