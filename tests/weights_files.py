"""Weights files in other projects' formats, written by the tests from reference networks."""
import pickle
import re

import numpy as np
import torch
from torch import nn

from retinanet_d2.checkpoint.torchvision_format import coco_category_ids

# For each anchor of Detectron's order (size-major, ratios 1, 2, 0.5) its index in detectron2's
# (size-major, ratios 0.5, 1, 2): ratio 1 is detectron2's 2nd, 2 its 3rd, 0.5 its 1st.
DETECTRON_FROM_DETECTRON2 = [1, 2, 0, 4, 5, 3, 7, 8, 6]
FROZEN_BN_EPS = 1e-5


def _blocks(array, order, per_anchor):
    return np.concatenate([array[i * per_anchor : (i + 1) * per_anchor] for i in order])


def detectron_blobs(model) -> dict:
    """A Detectron RetinaNet pickle's content for a detectron2 RetinaNet: Caffe2 names, FrozenBN
    folded into AffineChannel scale/shift, predictors in Detectron's anchor order, and optimiser
    momenta (which a loader must ignore)."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    stages = {int(m.group(1)): int(m.group(2)) for m in map(re.compile(r"backbone\.bottom_up\.res(\d)\.(\d+)\.").match, state) if m}
    blobs = {}
    for name, value in state.items():
        if name.endswith((".running_mean", ".running_var")) or ".norm." in name and name.endswith(".bias"):
            continue
        p = "w" if name.endswith("weight") else "b"
        if m := re.match(r"backbone\.bottom_up\.(?:stem\.conv1|res(\d)\.(\d+)\.(conv\d|shortcut))\.(norm\.)?weight$", name):
            stage, block, conv, norm = m.groups()
            blob = "conv1" if stage is None else f"res{stage}_{block}_" + ("branch1" if conv == "shortcut" else "branch2" + "abc"[int(conv[-1]) - 1])
            if norm:
                prefix = name[: -len("weight")]
                scale = (torch.from_numpy(state[name]) * (torch.from_numpy(state[prefix + "running_var"]) + FROZEN_BN_EPS).rsqrt()).numpy()
                blob = "res_conv1" if stage is None else blob
                blobs[blob + "_bn_s"] = scale
                blobs[blob + "_bn_b"] = state[prefix + "bias"] - state[prefix + "running_mean"] * scale
            else:
                blobs[blob + "_w"] = value
        elif m := re.match(r"backbone\.fpn_(lateral|output)(\d)\.", name):
            kind, stage = m.group(1), int(m.group(2))
            last = stages[stage]
            blob = f"fpn_inner_res{stage}_{last}_sum" + ("" if stage == 5 else "_lateral") if kind == "lateral" else f"fpn_res{stage}_{last}_sum"
            blobs[f"{blob}_{p}"] = value
        elif m := re.match(r"backbone\.top_block\.p(\d)\.", name):
            blobs[f"fpn_{m.group(1)}_{p}"] = value
        elif m := re.match(r"head\.(cls|bbox)_subnet\.(\d+)\.", name):
            blobs[f"retnet_{m.group(1)}_conv_n{int(m.group(2)) // 2}_fpn3_{p}"] = value
        elif name.startswith("head.cls_score."):
            blobs[f"retnet_cls_pred_fpn3_{p}"] = _blocks(value, DETECTRON_FROM_DETECTRON2, value.shape[0] // 9)
        elif name.startswith("head.bbox_pred."):
            blobs[f"retnet_bbox_pred_fpn3_{p}"] = _blocks(value, DETECTRON_FROM_DETECTRON2, 4)
        else:
            raise AssertionError(f"no Detectron name for {name}")
    blobs["conv1_w_momentum"] = np.ones_like(blobs["conv1_w"])
    blobs["retnet_cls_pred_fpn3_w_momentum"] = np.ones_like(blobs["retnet_cls_pred_fpn3_w"])
    return blobs


def write_pickle(obj, path) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def randomize_norms(model, seed: int) -> None:
    """Random affine parameters and running statistics in every (frozen) batch norm and group norm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") or isinstance(module, nn.GroupNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            if hasattr(module, "running_var"):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(1 + 0.2 * torch.rand(module.running_var.shape, generator=generator))


def torchvision_reference(builder, seed: int = 0, **kwargs):
    """torchvision's RetinaNet from ``builder`` (weights=None), randomly initialised so that it
    detects: fan-in scaled convs, random norms, class biases -3 (the 11 unused COCO ids -30)."""
    model = builder(weights=None, weights_backbone=None, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        randomize_norms(model, seed)
        bias = model.head.classification_head.cls_logits.bias.view(9, 91)
        bias[:] = -3.0
        bias[:, [i for i in range(91) if i not in coco_category_ids()]] = -30.0
    return model
