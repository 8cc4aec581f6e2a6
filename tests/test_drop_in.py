"""FocalRetinaNet selected from detectron2's own configs: a plain get_cfg() with detectron2's
model-zoo RetinaNet yaml, and detectron2's LazyConfig RetinaNet with only ``_target_`` changed."""
import pytest
import torch

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.utils.events import EventStorage

import retinanet_d2  # noqa: F401  (registers FocalRetinaNet)
from helpers import image_with_boxes
from retinanet_d2.modeling.losses import FocalLoss
from retinanet_d2.modeling.meta_arch import FocalRetinaNet


def zoo_cfg():
    """detectron2's model-zoo RetinaNet R50-FPN 1x yaml in a plain get_cfg(): no FOCAL_RETINANET node."""
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.RETINANET.NUM_CLASSES = "cpu", "", 3
    return cfg


def test_plain_get_cfg_builds_and_trains_with_the_papers_defaults():
    cfg = zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "FocalRetinaNet"
    assert "FOCAL_RETINANET" not in cfg.MODEL
    model = build_model(cfg)
    assert isinstance(model, FocalRetinaNet)
    loss = model.classification_loss
    assert type(loss) is FocalLoss and (loss.alpha, loss.gamma) == (0.25, 2.0)
    assert model.matcher_chunk_boxes == 256 and model.test_score_thresh == [0.05] * 5
    model.train()
    with EventStorage():
        losses = model([image_with_boxes(seed=0)])
    assert set(losses) == {"loss_cls", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    # Our other registered parts read their keys' defaults too.
    cfg.MODEL.BACKBONE.NAME = "build_focal_retinanet_resnet_fpn_backbone"
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "OctaveAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]  # detectron2's default: not set by the user
    assert build_model(cfg).anchor_generator.num_cell_anchors == [9] * 5


def test_plain_get_cfg_still_checks_values_naming_the_key():
    cfg = zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "FocalRetinaNet"
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = -1.0
    with pytest.raises(ValueError, match="MODEL.RETINANET.FOCAL_LOSS_GAMMA=-1.0"):
        build_model(cfg)


@pytest.fixture(scope="module")
def lazy_retinanet():
    """detectron2's LazyConfig RetinaNet (common/models/retinanet.py), 3 classes."""
    cfg = LazyConfig.load(get_config_file("common/models/retinanet.py"))
    cfg.model.num_classes = 3
    return cfg


def test_lazyconfig_retinanet_builds_focal_retinanet_by_changing_target_alone(lazy_retinanet):
    cfg = lazy_retinanet
    cfg.model._target_ = FocalRetinaNet
    model = instantiate(cfg.model)
    assert isinstance(model, FocalRetinaNet)
    matcher = model.anchor_matcher
    assert isinstance(matcher, Matcher) and matcher.thresholds[1:-1] == [0.4, 0.5] and matcher.labels == [0, -1, 1]
    model.train()
    with EventStorage():
        losses = model([image_with_boxes(seed=0)])
    assert all(torch.isfinite(v) for v in losses.values())


def test_an_injected_matcher_decides_the_assignment(lazy_retinanet):
    """Thresholds, labels and the low-quality setting of the injected Matcher are honoured."""
    cfg = lazy_retinanet
    cfg.model._target_ = FocalRetinaNet
    model = instantiate(cfg.model)
    batch = [image_with_boxes(seed=0)]
    paper = model.dense_outputs(batch).labels
    model.anchor_matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    strict = model.dense_outputs(batch).labels
    model.anchor_matcher = Matcher([0.5], [0, 1], allow_low_quality_matches=True)
    no_ignore = model.dense_outputs(batch).labels
    foreground = lambda labels: int(((labels >= 0) & (labels < 3)).sum())  # noqa: E731
    assert foreground(strict) < foreground(paper)  # IoU >= 0.7 and no low-quality matches
    assert (no_ignore == -1).sum() == 0 and (paper == -1).sum() > 0
