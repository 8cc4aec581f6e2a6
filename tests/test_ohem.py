import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from helpers import image_with_boxes, tiny_cfg, well_scaled_model
from retinanet_d2.modeling.losses.ohem import ohem_select

# Five anchors: 0 and 1 overlap with IoU 0.9; the others are apart. Label 2 is background (K = 2).
BOXES = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]])
LABELS = torch.tensor([0, 2, 2, 1, -1])
LOSSES = torch.tensor([1.0, 5.0, 3.0, 0.5, 9.0])


def test_plain_ohem_keeps_the_highest_loss_anchors_after_nms():
    # anchor 4 is ignored; anchor 0 (loss 1) is suppressed by anchor 1 (loss 5, IoU .9 > .7)
    assert ohem_select(LOSSES, BOXES, LABELS, 2, batch_size=2, fg_fraction=-1, nms_thresh=0.7).tolist() == [1, 2]
    assert ohem_select(LOSSES, BOXES, LABELS, 2, batch_size=10, fg_fraction=-1, nms_thresh=0.7).tolist() == [1, 2, 3]
    # without suppression (threshold 1.0) anchor 0 stays
    assert ohem_select(LOSSES, BOXES, LABELS, 2, batch_size=10, fg_fraction=-1, nms_thresh=1.0).tolist() == [1, 2, 0, 3]


def test_ohem_with_a_foreground_ratio():
    # B = 4, fg share .25: one foreground (anchor 3, the only fg left after NMS), then background
    assert ohem_select(LOSSES, BOXES, LABELS, 2, batch_size=4, fg_fraction=0.25, nms_thresh=0.7).tolist() == [3, 1, 2]


def test_ohem_model_normalises_by_the_anchors_it_selected():
    """OHEM_BATCH_SIZE_PER_IMAGE 16 on two images with thousands of candidates: 32 anchors selected,
    and the model's losses are the loss sums over them divided by 32."""
    cfg = tiny_cfg(**{"MODEL.FOCAL_RETINANET.LOSS": "ohem", "MODEL.RETINANET.FOCAL_LOSS_GAMMA": 0.0,
                      "MODEL.RETINANET.FOCAL_LOSS_ALPHA": -1.0, "MODEL.FOCAL_RETINANET.OHEM_BATCH_SIZE_PER_IMAGE": 16})
    model = well_scaled_model(cfg)
    model.train()
    batch = [image_with_boxes(seed=0), image_with_boxes(seed=1)]
    with EventStorage():
        outputs = model.dense_outputs(batch)
        losses = model.losses(outputs)
        foreground = (outputs.labels >= 0) & (outputs.labels < model.num_classes)
        fg_anchors = outputs.anchors.expand(2, -1, -1)[foreground]
        box_losses = model.box_losses(fg_anchors, outputs.deltas[foreground], outputs.matched_boxes[foreground])
        sums = model.classification_loss(outputs, foreground, box_losses)
    assert int(sums.count) == 2 * 16
    torch.testing.assert_close(losses["loss_cls"], sums.cls / 32, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_box_reg"], sums.box / 32, rtol=1e-6, atol=0)
    assert 0 < float(sums.box) < float(box_losses.sum())  # some foreground anchors selected, not all
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "key,value", [("OHEM_BATCH_SIZE_PER_IMAGE", 0), ("OHEM_FG_FRACTION", 1.5), ("OHEM_NMS_THRESH", 0.0)]
)
def test_bad_ohem_settings_name_the_key(key, value):
    cfg = tiny_cfg(**{"MODEL.FOCAL_RETINANET.LOSS": "ohem", f"MODEL.FOCAL_RETINANET.{key}": value})
    with pytest.raises(ValueError, match=key):
        build_model(cfg)


def _reference_select(losses, boxes, labels, num_classes, batch_size, fg_fraction, nms_thresh):
    """The module's algorithm in one pass: NMS over all 32 * B highest-loss non-ignored anchors."""
    from detectron2.layers import nms

    candidates = torch.nonzero(labels >= 0).squeeze(1)
    candidates = candidates[losses[candidates].topk(min(len(candidates), 32 * batch_size)).indices]
    kept = candidates[nms(boxes[candidates], losses[candidates], nms_thresh)]
    if fg_fraction == -1:
        return kept[:batch_size]
    is_fg = labels[kept] < num_classes
    foreground = kept[is_fg][: int(batch_size * fg_fraction)]
    return torch.cat([foreground, kept[~is_fg][: batch_size - len(foreground)]])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fg_fraction", [-1, 0.25])
def test_growing_nms_prefix_selects_what_nms_over_all_candidates_selects(seed, fg_fraction):
    # 6000 anchors in 300 tight clusters (heavy suppression), 1% ignored, 0.5% foreground whose
    # losses are the lowest (so the foreground quota is decided only by the last candidates) or random.
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(300, 2, generator=generator) * 500
    xy = centres.repeat_interleave(20, 0) + torch.randn(6000, 2, generator=generator) * 2
    size = 20 + torch.rand(6000, 1, generator=generator) * 4
    boxes = torch.cat([xy, xy + size], dim=1)
    labels = torch.full((6000,), 3)
    labels[torch.randperm(6000, generator=generator)[:60]] = -1
    foreground = torch.randperm(6000, generator=generator)[:30]
    labels[foreground] = torch.randint(0, 3, (30,), generator=generator)
    losses = torch.rand(6000, generator=generator) + 1
    if seed % 2:
        losses[foreground] = torch.rand(30, generator=generator)
    for batch_size in (16, 64, 256):
        args = (losses, boxes, labels, 3, batch_size, fg_fraction, 0.5)
        assert ohem_select(*args).tolist() == _reference_select(*args).tolist()
