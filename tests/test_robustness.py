"""Inputs real data has: no boxes, degenerate boxes, extreme sizes, thousands of boxes, odd images."""
import pytest
import torch

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from helpers import image_with_boxes, tiny_cfg, well_scaled_model
from retinanet_d2.modeling import assignment


@pytest.fixture(scope="module")
def model():
    return well_scaled_model(tiny_cfg())


def train_step(model, batch):
    model.train()
    model.zero_grad()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    return losses


def with_boxes(boxes, classes, height=160, width=224):
    record = image_with_boxes(height, width)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    record["instances"] = instances
    return record


def assert_finite_and_flowing(model, losses):
    assert all(torch.isfinite(v) for v in losses.values()), losses
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.head.cls_score.weight.grad.abs().sum() > 0


def test_image_without_boxes_is_all_background(model):
    losses = train_step(model, [with_boxes([], [])])
    assert_finite_and_flowing(model, losses)
    assert losses["loss_box_reg"].item() == 0.0


def test_degenerate_boxes_are_dropped_or_clipped(model):
    boxes = [
        [50, 50, 50, 90],  # zero width
        [80, 80, 40, 40],  # inverted
        [-500, -500, -400, -400],  # outside the image
        [float("nan"), 0, 10, 10],
        [0, 0, float("inf"), 50],  # not finite: dropped, as NaN
        [200, 100, 300, 400],  # partly outside: clipped
    ]
    record = with_boxes(boxes, [0, 1, 2, 3, 4, 1])
    anchors = Boxes.cat(model.anchor_generator(list(model.backbone(torch.zeros(1, 3, 160, 224)).values()))).tensor
    labels, matched, far = model.label_anchors(anchors, [record["instances"]])
    assert set(labels[labels >= 0].unique().tolist()) == {1, 5}  # the one usable box's class, background
    assert torch.isfinite(matched).all()
    assert matched.max() <= 224
    assert far.any() and (labels[far] == model.num_classes).all()  # far negatives are background
    assert_finite_and_flowing(model, train_step(model, [record]))


def anchors_of(model, height, width):
    features = model.backbone(torch.zeros(1, 3, height, width))
    return Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features])).tensor


def reference_labels(model, anchors, boxes, classes, image_size):
    """Labels by detectron2's own Matcher (0.4 / 0.5, low-quality matches) on the full IoU matrix of
    the boxes clipped to the image (as the model clips them)."""
    clipped = Boxes(boxes.clone())
    clipped.clip(image_size)
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    idxs, match = matcher(pairwise_iou(clipped, Boxes(anchors)))
    labels = torch.full((anchors.shape[0],), model.num_classes, dtype=torch.int64)
    labels[match == 1] = classes[idxs[match == 1]]
    labels[match == -1] = -1
    return labels


@pytest.mark.parametrize("box", [[10, 10, 10.5, 10.5], [0, 0, 224, 160]], ids=["half_pixel", "whole_image"])
def test_boxes_far_smaller_and_larger_than_any_anchor(model, box):
    """A 0.5 px box, and one as large as the image, each get exactly their highest-IoU anchors as
    foreground (low-quality matches: no anchor reaches IoU 0.5 with the tiny one), as detectron2's
    Matcher labels them, with the box as their regression target."""
    record = with_boxes([box], [3])
    anchors = anchors_of(model, 160, 224)
    labels, matched, _ = model.label_anchors(anchors, [record["instances"]])
    assert torch.equal(labels[0], reference_labels(model, anchors, torch.tensor([box]), torch.tensor([3]), (160, 224)))
    iou = pairwise_iou(Boxes(torch.tensor([box])), Boxes(anchors))[0]
    best = (iou == iou.max()).nonzero().flatten()
    foreground = (labels[0] == 3).nonzero().flatten()
    assert len(best) >= 1 and set(best.tolist()) <= set(foreground.tolist())
    if box[2] - box[0] < 1:
        assert torch.equal(foreground, best)  # the tiny box: its best anchors and no other
    assert torch.equal(matched[0, foreground], torch.tensor([box]).expand(len(foreground), 4))
    assert_finite_and_flowing(model, train_step(model, [record]))


def test_thousands_of_boxes(model, monkeypatch):
    """3000 boxes: the labels equal detectron2's Matcher on the whole 3000 x R IoU matrix, while the
    matcher never holds more than MATCHER_CHUNK_BOXES rows of it (memory O(chunk x R))."""
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=generator) * torch.tensor([200.0, 140.0])
    boxes = torch.cat([xy, xy + 4 + torch.rand(3000, 2, generator=generator) * 20], dim=1)
    classes = torch.arange(3000) % 5
    record = with_boxes(boxes.tolist(), classes.tolist())
    anchors = anchors_of(model, 160, 224)
    rows = []
    real_iou = assignment.pairwise_iou
    monkeypatch.setattr(assignment, "pairwise_iou", lambda a, b: rows.append(len(a)) or real_iou(a, b))
    labels, _, _ = model.label_anchors(anchors, [record["instances"]])
    monkeypatch.undo()
    assert max(rows) == model.matcher_chunk_boxes == 256 and sum(rows) == 2 * 3000  # two passes, in chunks
    assert torch.equal(labels[0], reference_labels(model, anchors, boxes, classes, (160, 224)))
    assert_finite_and_flowing(model, train_step(model, [record]))


@pytest.mark.parametrize("height,width", [(1, 1), (32, 2000), (2000, 32), (37, 53)])
def test_inference_on_odd_image_sizes(model, height, width):
    model.eval()
    with torch.no_grad():
        output = model([{"image": torch.rand(3, height, width) * 255}])[0]["instances"]
    assert output.image_size == (height, width)
    assert torch.isfinite(output.pred_boxes.tensor).all()
    assert (output.pred_boxes.tensor[:, 2] <= width).all() and (output.pred_boxes.tensor[:, 3] <= height).all()


def test_odd_training_image_size(model):
    """45 x 61: the anchors cover the padded image (64 x 64: the backbone's size divisibility) and
    the labels equal detectron2's Matcher's."""
    record = with_boxes([[2, 3, 30, 40]], [2], height=45, width=61)
    images = model.preprocess_image([record])
    assert tuple(images.tensor.shape[-2:]) == (64, 64)
    features = model.backbone(images.tensor)
    anchors = Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features])).tensor
    labels, _, _ = model.label_anchors(anchors, [record["instances"]])
    expected = reference_labels(model, anchors, torch.tensor([[2.0, 3, 30, 40]]), torch.tensor([2]), (45, 61))
    assert torch.equal(labels[0], expected) and (labels[0] == 2).sum() >= 1
    assert_finite_and_flowing(model, train_step(model, [record]))
