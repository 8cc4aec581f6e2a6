"""The inference rule of §4, checked against the rule itself (not against detectron2): per level the
scores above 0.05, then the 1000 highest; boxes decoded in the R-CNN parameterisation; greedy NMS at
IoU 0.5 within each class; the 100 highest detections."""
import glob
import math
import os
import re

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import build_anchor_generator

import retinanet_d2
from helpers import CONFIGS, load_tool, tiny_cfg

LEVELS = [(4000, 0), (1500, 1), (300, 2)]  # (anchors, seed) per level
K = 3


def rule_detections(anchors, scores, deltas, thresh=0.05, topk=1000, nms=0.5, cap=100):
    """The rule written out with Python loops: a list of (score, class, box)."""
    candidates = []
    for level_anchors, level_scores, level_deltas in zip(anchors, scores, deltas):
        above = [(float(s), i, k) for i, row in enumerate(level_scores.tolist()) for k, s in enumerate(row) if s > thresh]
        for score, i, k in sorted(above, reverse=True)[:topk]:
            x1, y1, x2, y2 = level_anchors[i].tolist()
            dx, dy, dw, dh = level_deltas[i].tolist()
            w, h = x2 - x1, y2 - y1
            cx, cy = x1 + w / 2 + dx * w, y1 + h / 2 + dy * h
            w, h = w * math.exp(dw), h * math.exp(dh)
            candidates.append((score, k, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
    kept = []
    for score, k, box in sorted(candidates, key=lambda c: -c[0]):
        if all(other_k != k or iou(box, other) <= nms for _, other_k, other in kept):
            kept.append((score, k, box))
    return kept[:cap]


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def level_inputs(count, seed):
    """Anchors crowded into a 200x200 image (so that NMS has work), scores spread over (0, 0.3)
    (so that the threshold and top-k both cut), small deltas."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * 160
    anchors = torch.cat([xy, xy + 10 + torch.rand(count, 2, generator=g) * 30], dim=1)
    scores = torch.rand(count, K, generator=g) * 0.3
    deltas = torch.randn(count, 4, generator=g) * 0.1
    return anchors, scores, deltas


def test_inference_follows_the_rule():
    model = build_model(tiny_cfg(**{"MODEL.RETINANET.NUM_CLASSES": K})).eval()
    model.test_score_thresh = [0.05] * len(LEVELS)
    anchors, scores, deltas = zip(*(level_inputs(n, s) for n, s in LEVELS))
    # Each stage decides: the first level has more candidates than top-k, NMS removes many, the cap cuts.
    assert (scores[0] > 0.05).sum() > 1000
    expected = rule_detections(anchors, scores, deltas)
    assert len(expected) == 100
    with torch.no_grad():
        out = model.inference_single_image(list(anchors), list(scores), list(deltas), (200, 200))
    assert len(out) == 100
    torch.testing.assert_close(out.scores, torch.tensor([e[0] for e in expected]), rtol=0, atol=0)
    assert out.pred_classes.tolist() == [e[1] for e in expected]
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([e[2] for e in expected]), rtol=0, atol=1e-3)


ABLATIONS = sorted(glob.glob(os.path.join(CONFIGS, "ablations", "*.yaml")))


@pytest.mark.parametrize("path", [p for p in ABLATIONS if not os.path.basename(p).startswith("Base-")], ids=os.path.basename)
def test_each_ablation_config_means_what_its_name_says(path):
    cfg = retinanet_d2.load_config(path)
    name = os.path.basename(path)[: -len(".yaml")]
    node, retina = cfg.MODEL.FOCAL_RETINANET, cfg.MODEL.RETINANET
    if m := re.fullmatch(r"t1a_ce_alpha([\d.]+)", name):
        assert (node.LOSS, retina.FOCAL_LOSS_GAMMA, retina.FOCAL_LOSS_ALPHA) == ("focal", 0.0, float(m.group(1)))
    elif m := re.fullmatch(r"t1b_fl_gamma([\d.]+)_alpha([\d.]+)", name):
        assert (node.LOSS, retina.FOCAL_LOSS_GAMMA, retina.FOCAL_LOSS_ALPHA) == ("focal", float(m.group(1)), float(m.group(2)))
    elif m := re.fullmatch(r"t1c_anchors_(\d)scales_(\d)ratios", name):
        scales, ratios = int(m.group(1)), int(m.group(2))
        assert node.SCALES_PER_OCTAVE == scales and len(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]) == ratios
        assert build_model_anchor_count(cfg) == scales * ratios
    elif m := re.fullmatch(r"t1d_ohem_(plain|1to3)_nms([\d.]+)_batch(\d+)_R101", name):
        assert (node.LOSS, node.OHEM_BATCH_SIZE_PER_IMAGE, cfg.MODEL.RESNETS.DEPTH) == ("ohem", int(m.group(3)), 101)
        assert node.OHEM_FG_FRACTION == (0.25 if m.group(1) == "1to3" else -1.0)
        assert node.OHEM_NMS_THRESH == float(m.group(2))
        assert (retina.FOCAL_LOSS_GAMMA, retina.FOCAL_LOSS_ALPHA) == (0.0, -1.0)  # plain CE
    elif m := re.fullmatch(r"t1e_R(\d+)_(\d+)", name):
        size = int(m.group(2))
        assert cfg.MODEL.RESNETS.DEPTH == int(m.group(1))
        assert cfg.MODEL.WEIGHTS.endswith(f"R-{m.group(1)}.pkl")
        assert cfg.INPUT.MIN_SIZE_TEST == size and size in cfg.INPUT.MIN_SIZE_TRAIN
    elif m := re.fullmatch(r"appA_fl_star_gamma([\d.]+)_beta([\d.]+)", name):
        assert (node.LOSS, node.STAR_GAMMA, node.STAR_BETA) == ("focal_star", float(m.group(1)), float(m.group(2)))
    else:
        raise AssertionError(f"no rule for the ablation config {name}")


def test_ablation_configs_are_the_grid_and_distinct():
    """configs/ablations/ is what tools/ablation_configs.py's GRID writes, and no two of its rows (nor a
    row and a SAME_AS target's table row) are one setting."""
    tool = load_tool("ablation_configs")
    for name, text in tool.expected_files().items():
        with open(os.path.join(CONFIGS, "ablations", name), encoding="utf-8") as f:
            assert f.read() == text, name
    leaves = {os.path.basename(p) for p in ABLATIONS if not os.path.basename(p).startswith("Base-")}
    assert leaves == set(tool.expected_files())
    dumps = {}
    for name in sorted(leaves):
        dumps.setdefault(retinanet_d2.load_config(os.path.join(CONFIGS, "ablations", name)).dump(), []).append(name)
    assert [names for names in dumps.values() if len(names) > 1] == []
    assert set(tool.SAME_AS.values()) <= {n[: -len(".yaml")] for n in leaves}


def build_model_anchor_count(cfg):
    """Anchors per location of the generator the config builds."""
    shapes = [ShapeSpec(channels=8, stride=s) for s in (8, 16, 32, 64, 128)]
    counts = set(build_anchor_generator(cfg, shapes).num_cell_anchors)
    assert len(counts) == 1
    return counts.pop()
