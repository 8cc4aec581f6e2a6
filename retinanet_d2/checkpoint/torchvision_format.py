"""torchvision ``retinanet_resnet50_fpn`` (v1) and ``retinanet_resnet50_fpn_v2`` state dicts ->
detectron2 state dicts of FocalRetinaNet.

torchvision's names: ``backbone.body`` (its ResNet: ``conv1``/``bn1``, ``layer1..4`` with ``conv{j}``,
``bn{j}``, ``downsample.{0,1}``), ``backbone.fpn.{inner,layer}_blocks.{k}`` (P3..P5 lateral and output
convs, ``.0.`` inside since torchvision 0.13), ``backbone.fpn.extra_blocks.p6/p7``, and
``head.{classification,regression}_head.conv.{i}`` (``.0`` conv, ``.1`` GroupNorm in v2; ``conv.{2i}``
in old v1 files), ``cls_logits`` and ``bbox_reg``. Anchors are ratio-major; logits are 91-way, indexed
by COCO category id.
"""
import re
from typing import Dict, List

import torch

from detectron2.data import MetadataCatalog

from .anchor_order import DETECTRON2_ASPECT_RATIOS, reorder_anchor_blocks, source_anchor_indices

# torchvision's COCO logits: one per category id 0..90 (0 and 11 ids unused).
TORCHVISION_COCO_CLASSES = 91
# detectron2's registered COCO split whose metadata maps category ids to contiguous classes.
COCO_METADATA = "coco_2017_val"

_STEM = re.compile(r"^backbone\.body\.(conv1|bn1)\.(\w+)$")
_BLOCK = re.compile(r"^backbone\.body\.layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")
_FPN = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)(?:\.0)?\.(weight|bias)$")
_EXTRA = re.compile(r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$")
_TOWER = re.compile(r"^head\.(classification|regression)_head\.conv\.(\d+)(?:\.([01]))?\.(weight|bias)$")
_PRED = re.compile(r"^head\.(classification_head\.cls_logits|regression_head\.bbox_reg)\.(weight|bias)$")
_SUBNET = {"classification": "cls_subnet", "regression": "bbox_subnet"}


def is_torchvision_retinanet(state: Dict) -> bool:
    """True if ``state`` looks like a torchvision RetinaNet state dict."""
    return "head.classification_head.cls_logits.weight" in state and any(
        k.startswith("backbone.body.") for k in state
    )


def torchvision_version(state: Dict) -> str:
    """"v2" (GroupNorm head, P6 from C5) or "v1" (no norm in the head, P6 from P5)."""
    return "v2" if "head.classification_head.conv.0.1.weight" in state else "v1"


def coco_category_ids() -> List[int]:
    """COCO category id of each of detectron2's 80 contiguous classes, in class order."""
    id_to_class = MetadataCatalog.get(COCO_METADATA).thing_dataset_id_to_contiguous_id
    return sorted(id_to_class, key=id_to_class.get)


def convert_torchvision_retinanet(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision RetinaNet state dict -> FocalRetinaNet state dict.

    91-way logits become detectron2's 80 COCO classes; any other class count is kept as is
    (class i stays class i). Raises ValueError naming any key it has no rule for.
    """
    grouped = torchvision_version(state) == "v2"
    converted = {}
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        converted[_rename(name, grouped)] = value
    for prefix in ("head.cls_subnet", "head.bbox_subnet"):
        _add_missing_conv_biases(converted, prefix)
    _select_classes_and_reorder(converted)
    return converted


def _rename(name: str, grouped: bool) -> str:
    """detectron2 name of one torchvision key (``grouped``: the head has GroupNorm, v2)."""
    if m := _STEM.match(name):
        layer, param = m.groups()
        return f"backbone.bottom_up.stem.conv1.{'norm.' if layer == 'bn1' else ''}{param}"
    if m := _BLOCK.match(name):
        stage, block, layer, param = m.groups()
        prefix = f"backbone.bottom_up.res{int(stage) + 1}.{block}"
        if layer.startswith("downsample"):
            return f"{prefix}.shortcut.{'norm.' if layer.endswith('1') else ''}{param}"
        kind, index = layer[:-1], layer[-1]
        return f"{prefix}.conv{index}.{'norm.' if kind == 'bn' else ''}{param}"
    if m := _FPN.match(name):
        kind, index, param = m.groups()
        return f"backbone.fpn_{'lateral' if kind == 'inner' else 'output'}{int(index) + 3}.{param}"
    if m := _EXTRA.match(name):
        return f"backbone.top_block.{m.group(1)}.{m.group(2)}"
    if m := _TOWER.match(name):
        branch, index, part, param = m.groups()
        if part is None:  # old v1 files: conv.{2i}, ReLU at the odd indices
            position = int(index)
        else:  # conv.{i}.0 conv, conv.{i}.1 GroupNorm
            position = (3 if grouped else 2) * int(index) + int(part)
        return f"head.{_SUBNET[branch]}.{position}.{param}"
    if m := _PRED.match(name):
        layer = "cls_score" if m.group(1).endswith("cls_logits") else "bbox_pred"
        return f"head.{layer}.{m.group(2)}"
    raise ValueError(f"no conversion rule for the torchvision key {name!r}")


def _add_missing_conv_biases(state: Dict[str, torch.Tensor], prefix: str) -> None:
    """torchvision's convs before a GroupNorm have no bias; detectron2's head convs do: zeros."""
    for name in [n for n in state if n.startswith(prefix) and n.endswith(".weight")]:
        bias = name[: -len("weight")] + "bias"
        if state[name].dim() == 4 and bias not in state:
            state[bias] = torch.zeros(state[name].shape[0], dtype=state[name].dtype)


def _select_classes_and_reorder(state: Dict[str, torch.Tensor]) -> None:
    """Ratio-major anchors -> detectron2's order; 91 COCO logits -> the 80 contiguous classes."""
    if "head.bbox_pred.weight" not in state:
        raise ValueError("the torchvision state dict has no head.regression_head.bbox_reg.weight")
    num_anchors = state["head.bbox_pred.weight"].shape[0] // 4
    order = source_anchor_indices(num_anchors, DETECTRON2_ASPECT_RATIOS, size_major=False)
    num_classes = state["head.cls_score.weight"].shape[0] // num_anchors
    keep = coco_category_ids() if num_classes == TORCHVISION_COCO_CLASSES else list(range(num_classes))
    channels = torch.tensor([a * num_classes + k for a in order for k in keep])
    for name in ("head.cls_score.weight", "head.cls_score.bias"):
        state[name] = state[name][channels]
    for name in ("head.bbox_pred.weight", "head.bbox_pred.bias"):
        state[name] = reorder_anchor_blocks(state[name], order, 4)
