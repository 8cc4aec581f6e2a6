"""The box loss objects against detectron2's own dense box regression loss (every type detectron2's
RetinaNet accepts), and as FocalRetinaNet builds and takes them."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from helpers import image_with_boxes, tiny_cfg
from retinanet_d2.modeling.losses import IoUBoxLoss, SmoothL1BoxLoss, build_box_loss


def random_boxes(n, generator, scale=100.0):
    xy = torch.rand(n, 2, generator=generator) * scale
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=generator) * scale / 2], dim=1)


@pytest.mark.parametrize("kind,beta", [("smooth_l1", 0.0), ("smooth_l1", 0.1), ("giou", 0.0), ("diou", 0.0),
                                       ("ciou", 0.0)])
def test_sums_equal_detectron2s_dense_box_regression_loss(kind, beta):
    generator = torch.Generator().manual_seed(0)
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = random_boxes(50, generator)
    deltas = (torch.randn(2, 50, 4, generator=generator) * 0.3).requires_grad_()
    matched = torch.stack([random_boxes(50, generator), random_boxes(50, generator)])
    foreground = torch.rand(2, 50, generator=generator) < 0.4
    reference = _dense_box_regression_loss([Boxes(anchors)], transform, [deltas], list(matched), foreground,
                                           box_reg_loss_type=kind, smooth_l1_beta=beta)
    loss = build_box_loss(kind, beta)
    ours = loss(anchors.expand(2, -1, -1)[foreground], deltas[foreground], matched[foreground], transform)
    assert ours.shape == (int(foreground.sum()),) and bool((ours >= 0).all())
    torch.testing.assert_close(ours.sum(), reference, rtol=1e-6, atol=1e-6)
    (ours_grad,) = torch.autograd.grad(ours.sum(), deltas)
    (reference_grad,) = torch.autograd.grad(reference, deltas)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-7)


def test_the_model_builds_the_configured_loss_and_trains_with_it():
    """loss_box_reg of a CIoU model = detectron2's dense CIoU loss over the model's own foreground
    anchors, divided by their number (the paper's normaliser)."""
    model = build_model(tiny_cfg(**{"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "ciou"})).train()
    assert isinstance(model.box_loss, IoUBoxLoss) and model.box_loss.kind == "ciou"
    with EventStorage():
        outputs = model.dense_outputs([image_with_boxes(seed=0)])
        losses = model.losses(outputs)
    foreground = (outputs.labels >= 0) & (outputs.labels < model.num_classes)
    reference = _dense_box_regression_loss([Boxes(outputs.anchors)], model.box2box_transform, [outputs.deltas],
                                           list(outputs.matched_boxes), foreground, box_reg_loss_type="ciou")
    assert int(foreground.sum()) > 0
    torch.testing.assert_close(losses["loss_box_reg"], reference / foreground.sum(), rtol=1e-5, atol=0)
    default = build_model(tiny_cfg())
    assert isinstance(default.box_loss, SmoothL1BoxLoss) and default.box_loss.beta == 0.0


def test_a_box_loss_object_and_loss_arguments_together_are_refused():
    from retinanet_d2.modeling.meta_arch import FocalRetinaNet

    kwargs = FocalRetinaNet.from_config(tiny_cfg())
    with pytest.raises(ValueError, match="box_reg_loss_type='giou', smooth_l1_beta=0.0 given together with box_loss"):
        FocalRetinaNet(**{**kwargs, "box_reg_loss_type": "giou", "box_loss": SmoothL1BoxLoss(0.0)})
