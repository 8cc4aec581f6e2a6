"""Detectron (Caffe2) RetinaNet pickles -> detectron2 state dicts of FocalRetinaNet.

Detectron's blobs: ResNet and FPN names, which detectron2's own Caffe2 renaming maps
(``res2_0_branch2a_w`` -> ``res2.0.conv1.weight``, ``fpn_inner_res5_2_sum_w`` -> ``fpn_lateral5.weight``,
...); ``fpn_6``/``fpn_7`` (P6 from C5, P7); the head ``retnet_{cls,bbox}_conv_n{i}_fpn3`` and
``retnet_{cls,bbox}_pred_fpn3``, stored once at the lowest level and shared by the others; optimiser
state ``*_momentum``. Frozen BN is Caffe2's AffineChannel (scale ``_bn_s``, shift ``_bn_b``).
"""
import re
from typing import Dict

import numpy as np

from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names
from detectron2.layers import FrozenBatchNorm2d

from .anchor_order import reorder_anchor_blocks, source_anchor_indices

# Detectron's RetinaNet aspect ratios, in the order of its configs' RETINANET.ASPECT_RATIOS.
DETECTRON_ASPECT_RATIOS = (1.0, 2.0, 0.5)
# running_var of a converted AffineChannel, so that FrozenBatchNorm2d's rsqrt(var + eps) is 1.
AFFINE_RUNNING_VAR = 1.0 - FrozenBatchNorm2d(1).eps

_HEAD_CONV = re.compile(r"^retnet_(cls|bbox)_conv_n(\d+)_fpn(\d+)_([wb])$")
_HEAD_PRED = re.compile(r"^retnet_(cls|bbox)_pred_fpn(\d+)_([wb])$")
_TOP_BLOCK = re.compile(r"^fpn_([67])_([wb])$")
_PARAM = {"w": "weight", "b": "bias"}


def is_detectron_retinanet(blobs: Dict) -> bool:
    """True if ``blobs`` (the ``"blobs"`` of a Detectron pickle) hold a RetinaNet head."""
    return any(name.startswith("retnet_") for name in blobs)


def without_optimizer_state(blobs: Dict) -> Dict:
    """``blobs`` without the optimiser's ``*_momentum`` blobs."""
    return {k: v for k, v in blobs.items() if not k.endswith("_momentum")}


def convert_detectron_retinanet(blobs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Detectron RetinaNet blobs -> FocalRetinaNet state dict (numpy arrays).

    Raises ValueError naming any blob it has no rule for, or head blobs at several FPN levels
    (Detectron stores the head once, at the lowest level, and shares it).
    """
    converted, backbone, head_levels = {}, {}, set()
    for name, value in without_optimizer_state(blobs).items():
        head_conv, head_pred, top = _HEAD_CONV.match(name), _HEAD_PRED.match(name), _TOP_BLOCK.match(name)
        if head_conv:
            branch, index, level, param = head_conv.groups()
            converted[f"head.{branch}_subnet.{2 * int(index)}.{_PARAM[param]}"] = value
            head_levels.add(level)
        elif head_pred:
            branch, level, param = head_pred.groups()
            converted[f"head.{'cls_score' if branch == 'cls' else 'bbox_pred'}.{_PARAM[param]}"] = value
            head_levels.add(level)
        elif top:
            converted[f"backbone.top_block.p{top.group(1)}.{_PARAM[top.group(2)]}"] = value
        else:
            backbone[name] = value
    if len(head_levels) > 1:
        raise ValueError(f"Detectron head blobs at several FPN levels {sorted(head_levels)}; expected one")
    renamed, original = convert_c2_detectron_names(backbone)
    for name, value in renamed.items():
        if name.startswith(("fpn_lateral", "fpn_output")):
            converted[f"backbone.{name}"] = value
        elif name.startswith(("stem.", "res")):
            converted[f"backbone.bottom_up.{name}"] = value
        else:
            raise ValueError(f"no conversion rule for the Detectron blob {original[name]!r}")
    _add_affine_running_stats(converted)
    _reorder_predictors(converted)
    return converted


def _add_affine_running_stats(state: Dict[str, np.ndarray]) -> None:
    """Running mean 0 and var 1 - eps for every AffineChannel, so FrozenBN applies scale and shift exactly."""
    for name in [n for n in state if n.endswith(".norm.weight")]:
        prefix = name[: -len("weight")]
        channels = state[name].shape[0]
        state.setdefault(prefix + "running_mean", np.zeros(channels, dtype=np.float32))
        state.setdefault(prefix + "running_var", np.full(channels, AFFINE_RUNNING_VAR, dtype=np.float32))


def _reorder_predictors(state: Dict[str, np.ndarray]) -> None:
    """Detectron's anchors (ratios 1, 2, 0.5 within each size) -> detectron2's (0.5, 1, 2)."""
    for branch in ("cls", "bbox"):
        name = "head.cls_score.weight" if branch == "cls" else "head.bbox_pred.weight"
        if name not in state:
            raise ValueError(f"the Detectron pickle has no retnet_{branch}_pred_fpn* blob")
    num_anchors = state["head.bbox_pred.weight"].shape[0] // 4
    order = source_anchor_indices(num_anchors, DETECTRON_ASPECT_RATIOS, size_major=True)
    for name in ("head.cls_score.weight", "head.cls_score.bias"):
        state[name] = reorder_anchor_blocks(state[name], order, state[name].shape[0] // num_anchors)
    for name in ("head.bbox_pred.weight", "head.bbox_pred.bias"):
        state[name] = reorder_anchor_blocks(state[name], order, 4)
