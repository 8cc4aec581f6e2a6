"""Detectron's RetinaNet inference, written from Detectron's published algorithm (its Caffe2 model
builders and core/test_retinanet.py), never from detectron2's code: it runs on the raw blobs of a
Detectron pickle, so a converter or config that misreads them cannot agree with it by construction.

Network (convolutions through torch.nn.functional, Detectron's blob names): ResNet body with
AffineChannel after every conv; FPN lateral 1x1 + nearest 2x top-down + 3x3 output on C3-C5;
P6 = 3x3/2 conv on C5, P7 = 3x3/2 conv on ReLU(P6); the heads stored at fpn3, shared by every level.

Test path (NumPy, Detectron's "+1" pixel convention): cell anchors by generate_anchors (ratio
enumeration with rounded width/height on the stride x stride window, then scaling), placed at
(x, y) * stride; per level the probabilities above 0.05 (0.0 on the last level), the 1000 highest;
bbox_transform with widths x2 - x1 + 1 and x2 = ctr + w/2 - 1; boxes clipped to [0, W-1] x [0, H-1];
class-wise NMS with +1 areas, suppressing IoU >= 0.5; the 100 highest scores over all classes.
"""
import re
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

BBOX_XFORM_CLIP = np.log(1000.0 / 16.0)


# ------------------------------------------------------------------------------------ anchors
def _whctrs(anchor):
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws, hs, x_ctr, y_ctr):
    ws, hs = np.asarray(ws, dtype=np.float64)[:, None], np.asarray(hs, dtype=np.float64)[:, None]
    return np.hstack([x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)])


def generate_anchors(stride: float, size: float, aspect_ratio: float) -> np.ndarray:
    """One (4,) anchor in the +1 convention on the window (0, 0, stride - 1, stride - 1)."""
    w, h, x_ctr, y_ctr = _whctrs(np.array([0.0, 0.0, stride - 1, stride - 1]))
    ws = np.round(np.sqrt(w * h / np.array([aspect_ratio])))
    hs = np.round(ws * aspect_ratio)
    ratio_anchor = _mkanchors(ws, hs, x_ctr, y_ctr)[0]
    w, h, x_ctr, y_ctr = _whctrs(ratio_anchor)
    scale = size / stride
    return _mkanchors([w * scale], [h * scale], x_ctr, y_ctr)[0]


def cell_anchors(stride: float, anchor_scale: float, scales_per_octave: int, aspect_ratios) -> np.ndarray:
    """(A, 4): for each octave scale, for each aspect ratio (Detectron's order)."""
    return np.array(
        [
            generate_anchors(stride, stride * 2 ** (octave / scales_per_octave) * anchor_scale, ratio)
            for octave in range(scales_per_octave)
            for ratio in aspect_ratios
        ]
    )


# ------------------------------------------------------------------------------------ boxes
def bbox_transform(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Detectron's decoding with weights (1, 1, 1, 1), +1 convention."""
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw, dh = np.minimum(deltas[:, 2], BBOX_XFORM_CLIP), np.minimum(deltas[:, 3], BBOX_XFORM_CLIP)
    pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
    pred_w, pred_h = np.exp(dw) * widths, np.exp(dh) * heights
    return np.stack(
        [pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h, pred_ctr_x + 0.5 * pred_w - 1, pred_ctr_y + 0.5 * pred_h - 1],
        axis=1,
    )


def clip_tiled_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    return boxes


def nms(dets: np.ndarray, thresh: float) -> List[int]:
    """Greedy NMS of (M, 5) [x1, y1, x2, y2, score], +1 areas, suppressing IoU >= thresh."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(dets), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2) - np.maximum(x1[i], x1) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2) - np.maximum(y1[i], y1) + 1)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) >= thresh
    return keep


# ------------------------------------------------------------------------------------ network
class _Blobs:
    def __init__(self, blobs: Dict[str, np.ndarray]):
        self.blobs = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in blobs.items() if not k.endswith("_momentum")}

    def conv(self, x, name, stride=1):
        weight = self.blobs[name + "_w"]
        return F.conv2d(x, weight, self.blobs.get(name + "_b"), stride, weight.shape[-1] // 2)

    def affine(self, x, name):
        return x * self.blobs[name + "_s"][None, :, None, None] + self.blobs[name + "_b"][None, :, None, None]

    def has(self, name):
        return name in self.blobs


def _res_block(net: _Blobs, x, prefix: str, stride: int, stride_1x1: bool):
    branches = ["branch2a", "branch2b", "branch2c"] if net.has(f"{prefix}_branch2c_w") else ["branch2a", "branch2b"]
    strided = 0 if (stride_1x1 or len(branches) == 2) else 1
    y = x
    for i, branch in enumerate(branches):
        y = net.affine(net.conv(y, f"{prefix}_{branch}", stride if i == strided else 1), f"{prefix}_{branch}_bn")
        if i < len(branches) - 1:
            y = F.relu(y)
    if net.has(f"{prefix}_branch1_w"):
        x = net.affine(net.conv(x, f"{prefix}_branch1", stride), f"{prefix}_branch1_bn")
    return F.relu(y + x)


def _stage_sizes(net: _Blobs) -> Dict[int, int]:
    blocks: Dict[int, int] = {}
    for name in net.blobs:
        m = re.match(r"res(\d)_(\d+)_branch2a_w$", name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    return blocks


def network_outputs(blobs, image: torch.Tensor, num_convs: int, stride_1x1: bool = True):
    """Per level P3..P7: (class probabilities (A*K, H, W), box deltas (A*4, H, W)) as NumPy.

    image: (3, H, W), already normalised as the model expects (mean subtracted).
    """
    net = _Blobs(blobs)
    x = F.max_pool2d(F.relu(net.affine(net.conv(image[None], "conv1", 2), "res_conv1_bn")), 3, 2, 1)
    stages, c = _stage_sizes(net), {}
    for stage in sorted(stages):
        for block in range(stages[stage]):
            x = _res_block(net, x, f"res{stage}_{block}", 2 if (block == 0 and stage > 2) else 1, stride_1x1)
        c[stage] = x
    last = {s: stages[s] - 1 for s in stages}
    inner = net.conv(c[5], f"fpn_inner_res5_{last[5]}_sum")
    pyramid = {5: net.conv(inner, f"fpn_res5_{last[5]}_sum")}
    for stage in (4, 3):
        lateral = net.conv(c[stage], f"fpn_inner_res{stage}_{last[stage]}_sum_lateral")
        inner = lateral + F.interpolate(inner, scale_factor=2, mode="nearest")
        pyramid[stage] = net.conv(inner, f"fpn_res{stage}_{last[stage]}_sum")
    pyramid[6] = net.conv(c[5], "fpn_6", 2)
    pyramid[7] = net.conv(F.relu(pyramid[6]), "fpn_7", 2)
    outputs = []
    for level in range(3, 8):
        towers = {}
        for branch in ("cls", "bbox"):
            y = pyramid[level]
            for i in range(num_convs):
                y = F.relu(net.conv(y, f"retnet_{branch}_conv_n{i}_fpn3"))
            towers[branch] = net.conv(y, f"retnet_{branch}_pred_fpn3")
        outputs.append((torch.sigmoid(towers["cls"])[0].numpy(), towers["bbox"][0].numpy()))
    return outputs


# ------------------------------------------------------------------------------------ test path
def detect(
    blobs,
    image: torch.Tensor,
    *,
    num_convs: int,
    aspect_ratios=(1.0, 2.0, 0.5),
    anchor_scale: float = 4.0,
    scales_per_octave: int = 3,
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_image: int = 100,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detectron's detections of one normalised image (3, H, W) at scale 1: boxes (D, 4) in the +1
    convention, scores (D,), 0-based classes (D,), highest score first."""
    height, width = image.shape[1:]
    outputs = network_outputs(blobs, image, num_convs)
    num_anchors = scales_per_octave * len(aspect_ratios)
    per_class: Dict[int, list] = {}
    for index, (probs, deltas) in enumerate(outputs):
        level = 3 + index
        stride = 2.0**level
        anchors = cell_anchors(stride, anchor_scale, scales_per_octave, aspect_ratios)
        _, h, w = probs.shape
        probs = probs.reshape(num_anchors, -1, h, w)
        deltas = deltas.reshape(num_anchors, 4, h, w)
        flat = probs.ravel()
        threshold = score_thresh if level < 7 else 0.0
        candidates = np.where(flat > threshold)[0]
        if len(candidates) == 0:
            continue
        top_n = min(pre_nms_top_n, len(candidates))
        inds = candidates[np.argpartition(flat[candidates], -top_n)[-top_n:]]
        anchor_ids, classes, y, x = np.unravel_index(inds, probs.shape)
        scores = probs[anchor_ids, classes, y, x]
        boxes = np.column_stack((x, y, x, y)).astype(np.float32)
        boxes *= stride
        boxes += anchors[anchor_ids, :]
        pred = clip_tiled_boxes(bbox_transform(boxes, deltas[anchor_ids, :, y, x]), height, width)
        for cls in np.unique(classes):
            rows = classes == cls
            per_class.setdefault(int(cls), []).append(np.column_stack([pred[rows], scores[rows]]))
    detections = []
    for cls, parts in per_class.items():
        dets = np.vstack(parts).astype(np.float32)
        kept = dets[nms(dets, nms_thresh)]
        detections.append(np.column_stack([kept, np.full(len(kept), cls)]))
    detections = np.vstack(detections)
    detections = detections[np.argsort(-detections[:, 4], kind="stable")[:detections_per_image]]
    return detections[:, :4], detections[:, 4], detections[:, 5].astype(np.int64)
