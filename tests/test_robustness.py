"""Inputs real data has: no boxes, degenerate boxes, extreme sizes, thousands of boxes, odd images."""
import pytest
import torch

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from helpers import image_with_boxes, tiny_cfg, well_scaled_model


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


def test_boxes_far_smaller_and_larger_than_any_anchor(model):
    record = with_boxes([[10, 10, 10.5, 10.5], [0, 0, 224, 160]], [0, 1])
    assert_finite_and_flowing(model, train_step(model, [record]))


def test_thousands_of_boxes(model):
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=generator) * torch.tensor([200.0, 140.0])
    boxes = torch.cat([xy, xy + 4 + torch.rand(3000, 2, generator=generator) * 20], dim=1)
    record = with_boxes(boxes.tolist(), (torch.arange(3000) % 5).tolist())
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
    record = with_boxes([[2, 3, 30, 40]], [2], height=45, width=61)
    assert_finite_and_flowing(model, train_step(model, [record]))
