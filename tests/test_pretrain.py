"""Backbone pretraining for the study (lab/pretrain.py): object crops, the saved checkpoint
loading into the detector, and the reuse of an existing pretraining."""
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from helpers import tiny_cfg
from lab.pretrain import BACKBONE_PREFIX, ensure_pretrained_backbone, object_crops
from retinanet_d2.checkpoint.checkpointer import load_model_weights

TINY_DATASETS = ("shapes_tiny_train", "shapes_tiny_val")


def test_object_crops_centre_the_object_and_background_avoids_it(tmp_path):
    image = np.full((100, 100, 3), 50, np.uint8)
    image[40:60, 40:60] = (0, 0, 255)  # a red 20 px square
    cv2.imwrite(str(tmp_path / "a.png"), image)
    record = {"file_name": str(tmp_path / "a.png"), "image_id": 1,
              "annotations": [{"bbox": [40, 40, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2}]}
    crops, labels = object_crops([record], size=16, seed=0)
    assert crops.shape == (2, 3, 16, 16) and crops.dtype == torch.uint8 and labels.tolist() == [2, -1]
    red = (crops[:, 2] > 200) & (crops[:, 0] < 50)  # (2, 16, 16)
    # the object's crop is its 40 px square centred on it: the middle half (8 of 16 px) is the object
    # (its edge pixels blended)
    assert bool(red[0, 5:11, 5:11].all()) and not bool(red[0, :3].any())
    # the background crop (40 px, covering at most 10% of the 400 px object) shows at most 40 / 1600 red
    assert int(red[1].sum()) <= 0.025 * 256 + 2


def test_pretrained_backbone_loads_into_the_detector_and_is_reused(tmp_path):
    cfg = tiny_cfg(**{"MODEL.RETINANET.NUM_CLASSES": 3, "MODEL.WEIGHTS": str(tmp_path / "backbone.pth")})
    record = ensure_pretrained_backbone(cfg, iterations=2, datasets=TINY_DATASETS)
    assert record["iterations"] == 2 and record["train_crops"] > 0 and 0 <= record["val_accuracy"] <= 1
    saved = torch.load(cfg.MODEL.WEIGHTS, weights_only=True)["model"]
    model = build_model(cfg)
    assert set(saved) == {BACKBONE_PREFIX + k for k in model.backbone.bottom_up.state_dict()}
    load_model_weights(model, cfg.MODEL.WEIGHTS, require_complete=False)  # a backbone: the head stays random
    state = model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in saved.items())

    before = os.path.getmtime(cfg.MODEL.WEIGHTS)
    assert ensure_pretrained_backbone(cfg, iterations=2, datasets=TINY_DATASETS) == record
    assert os.path.getmtime(cfg.MODEL.WEIGHTS) == before
    with pytest.raises(ValueError, match="backbone.pth was pretrained for 2 iterations"):
        ensure_pretrained_backbone(cfg, iterations=3, datasets=TINY_DATASETS)


def test_a_damaged_pretraining_record_is_named(tmp_path):
    weights = tmp_path / "backbone.pth"
    weights.write_bytes(b"")
    (tmp_path / "backbone.pth.json").write_text("{not json")
    cfg = tiny_cfg(**{"MODEL.WEIGHTS": str(weights)})
    with pytest.raises(ValueError, match="backbone.pth.json: not a pretraining record"):
        ensure_pretrained_backbone(cfg, iterations=2, datasets=TINY_DATASETS)
    assert (tmp_path / "backbone.pth.json").read_text() == "{not json"  # nothing overwritten
