"""The loss objects' contract (modeling/losses/dense.py) on hand-built batches: counts, sums and OHEM's selection
for every implementation; and MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT (m): the classification loss
of background anchors that overlap no box weighed m times. m = 1 is the paper's loss bit for bit;
m > 1 equals the explicitly weighted elementwise sum; the far anchors are exactly those with IoU 0
with every box."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from helpers import image_with_boxes, tiny_cfg
from retinanet_d2.modeling.losses import (
    DenseLoss, DenseOutputs, FocalLoss, FocalLossStar, OhemLoss, build_classification_loss,
)
from retinanet_d2.modeling.losses import focal_loss_from_labels, sigmoid_focal_loss, sigmoid_focal_loss_star

K = 3


def hand_built_outputs(seed=0):
    """Two images of 6 anchors: labels with every kind (class, background, ignored), saturated and
    moderate logits, and far negatives among the background anchors."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 6, K, generator=generator) * 4
    logits[0, 0] = torch.tensor([30.0, -30.0, 12.0])  # saturated
    labels = torch.tensor([[0, K, K, -1, 2, K], [K, K, K, K, 1, -1]])
    far = torch.tensor([[False, True, False, False, False, True], [True, True, False, True, False, False]])
    anchors = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    return DenseOutputs(anchors, logits.requires_grad_(), torch.zeros(2, 6, 4), labels, torch.zeros(2, 6, 4), far)


def loss_and_grad(loss, outputs):
    foreground = (outputs.labels >= 0) & (outputs.labels < K)
    sums = loss(outputs, foreground, torch.ones(int(foreground.sum())))
    (grad,) = torch.autograd.grad(sums.cls, outputs.logits)
    return sums, grad


def elementwise_reference(outputs, elementwise_loss, m):
    """sum over non-ignored anchors and classes of w * loss, w = m on far anchors, else 1."""
    valid = outputs.labels >= 0
    targets = (outputs.labels[..., None] == torch.arange(K)).float()
    weights = torch.where(outputs.far_negatives, m, 1.0)[..., None] * valid[..., None]
    return (elementwise_loss(outputs.logits, targets) * weights).sum()


def test_weight_one_is_the_papers_loss_bit_for_bit():
    outputs = hand_built_outputs()
    sums, grad = loss_and_grad(FocalLoss(alpha=0.25, gamma=2.0, far_negative_weight=1.0), outputs)
    paper = focal_loss_from_labels(outputs.logits.reshape(-1, K), outputs.labels.reshape(-1), 0.25, 2.0)
    (paper_grad,) = torch.autograd.grad(paper, outputs.logits)
    assert torch.equal(sums.cls, paper) and torch.equal(grad, paper_grad)
    assert sums.far_cls is None and sums.count == 3 and sums.box == 3  # labels 0, 2 and 1


@pytest.mark.parametrize("m", [10.0, 100.0, 0.5])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.9, 0.0)])
def test_weight_m_equals_the_explicitly_weighted_sum(m, alpha, gamma):
    outputs = hand_built_outputs()
    sums, grad = loss_and_grad(FocalLoss(alpha=alpha, gamma=gamma, far_negative_weight=m), outputs)
    reference = elementwise_reference(outputs, lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma), m)
    (reference_grad,) = torch.autograd.grad(reference, outputs.logits)
    torch.testing.assert_close(sums.cls, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-12)
    far_only = outputs._replace(labels=torch.where(outputs.far_negatives, outputs.labels, -1))
    far_reference = elementwise_reference(far_only, lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma), m)
    torch.testing.assert_close(sums.far_cls, far_reference.detach(), rtol=1e-6, atol=0)
    assert not sums.far_cls.requires_grad


def test_fl_star_takes_the_weight_too():
    outputs = hand_built_outputs(seed=1)
    sums, _ = loss_and_grad(FocalLossStar(alpha=0.25, gamma=2.0, beta=1.0, far_negative_weight=10.0), outputs)
    reference = elementwise_reference(outputs, lambda x, t: sigmoid_focal_loss_star(x, t, 0.25, 2.0, 1.0), 10.0)
    torch.testing.assert_close(sums.cls, reference, rtol=1e-6, atol=0)


def test_far_negatives_are_the_anchors_that_overlap_no_box():
    model = build_model(tiny_cfg())
    # IoU with the box [0, 0, 10, 10]: 1, 70/130, 60/140 (ignored), 50/150, 20/180, 0.
    anchors = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [4, 0, 14, 10], [5, 0, 15, 10], [8, 0, 18, 10],
                            [20, 0, 30, 10]])
    with_box = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]])), gt_classes=torch.tensor([2]))
    without = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    labels, _, far = model.label_anchors(anchors, [with_box, without])
    background = model.num_classes
    assert labels.tolist() == [[2, 2, -1, background, background, background], [background] * 6]
    assert far.tolist() == [[False] * 5 + [True], [True] * 6]


def test_the_share_of_far_negatives_is_logged_in_training():
    cfg = tiny_cfg()
    cfg.MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT = 10.0
    model = build_model(cfg).train()
    batch = [image_with_boxes(seed=0)]
    outputs = model.dense_outputs(batch)
    foreground = (outputs.labels >= 0) & (outputs.labels < model.num_classes)
    sums = model.classification_loss(outputs, foreground, torch.zeros(int(foreground.sum())))
    with EventStorage() as storage:
        model.losses(outputs)
    logged = storage.history("far_negative_loss_share").latest()
    assert 0 < logged < 1 and logged == pytest.approx(float(sums.far_cls / sums.cls.detach()), rel=1e-6)


def test_bad_weights_are_refused_naming_the_key():
    cfg = tiny_cfg()
    cfg.MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT = 0.0
    with pytest.raises(ValueError, match=r"far_negative_weight must be > 0, got 0.0 .*FAR_NEGATIVE_WEIGHT=0.0"):
        build_classification_loss(cfg)
    cfg.MODEL.FOCAL_RETINANET.FAR_NEGATIVE_WEIGHT = 10.0
    cfg.MODEL.FOCAL_RETINANET.LOSS = "ohem"
    with pytest.raises(ValueError, match="OHEM picks its own negatives.*LOSS='ohem'.*FAR_NEGATIVE_WEIGHT=10.0"):
        build_classification_loss(cfg)


def box_losses_of(outputs):
    """A distinct box loss for each foreground anchor (1, 2, ...), and the foreground mask."""
    foreground = (outputs.labels >= 0) & (outputs.labels < K)
    return foreground, torch.arange(1.0, int(foreground.sum()) + 1)


@pytest.mark.parametrize("loss", [FocalLoss(alpha=0.25, gamma=2.0), FocalLoss(alpha=0.75, gamma=0.0),
                                  FocalLossStar(alpha=0.25, gamma=2.0, beta=1.0)])
def test_anchor_sums_count_the_foreground_and_sum_every_valid_anchor(loss):
    outputs = hand_built_outputs()
    foreground, box = box_losses_of(outputs)
    sums = loss(outputs, foreground, box)
    assert isinstance(loss, DenseLoss) and sums.count == 3 and sums.box == 6.0  # 1 + 2 + 3
    per_anchor = loss.per_anchor(outputs.logits, outputs.labels)  # (2, 6), 0 where ignored
    assert per_anchor.shape == (2, 6) and per_anchor[0, 3] == 0 and per_anchor[1, 5] == 0
    torch.testing.assert_close(sums.cls, per_anchor.sum(), rtol=1e-6, atol=0)


def ohem_sums(batch_size_per_image, nms_thresh):
    """Plain OHEM over CE of hand_built_outputs: (the batch, its foreground, box losses, the scoring
    loss, the LossSums)."""
    outputs = hand_built_outputs()
    foreground, box = box_losses_of(outputs)
    scoring = FocalLoss(alpha=-1, gamma=0.0)
    loss = OhemLoss(scoring_loss=scoring, batch_size_per_image=batch_size_per_image, fg_fraction=-1,
                    nms_thresh=nms_thresh)
    return outputs, foreground, box, scoring, loss(outputs, foreground, box)


def test_ohem_with_room_for_every_anchor_is_the_plain_sum_over_valid_anchors():
    outputs, _, _, scoring, sums = ohem_sums(batch_size_per_image=100, nms_thresh=1.0)
    assert sums.count == 10  # every non-ignored anchor: 5 per image
    assert sums.box == 6.0
    torch.testing.assert_close(sums.cls, scoring.per_anchor(outputs.logits, outputs.labels).sum(), rtol=1e-6, atol=0)


def test_ohem_with_one_anchor_per_image_keeps_each_images_highest_loss_anchor():
    outputs, foreground, box, scoring, sums = ohem_sums(batch_size_per_image=1, nms_thresh=0.7)
    cls = scoring.per_anchor(outputs.logits, outputs.labels).detach()
    box_per_anchor = torch.zeros(2, 6)
    box_per_anchor[foreground] = box
    total = (cls + box_per_anchor).masked_fill(outputs.labels < 0, -1.0)
    picked = total.argmax(dim=1)  # one per image
    assert sums.count == 2
    torch.testing.assert_close(sums.cls, cls[[0, 1], picked].sum(), rtol=1e-6, atol=0)
    assert sums.box == box_per_anchor[[0, 1], picked].sum()


def test_ohem_refuses_a_scoring_loss_that_weighs_far_negatives():
    with pytest.raises(ValueError, match="OHEM picks its own negatives"):
        OhemLoss(scoring_loss=FocalLoss(far_negative_weight=10.0))
