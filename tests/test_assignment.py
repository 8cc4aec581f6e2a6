import torch

from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou

from retinanet_d2.modeling.assignment import match_anchors

PAPER = ([0.4, 0.5], [0, -1, 1])  # thresholds, labels (§4)


def paper_match(gt, anchors, low_quality_matches=True, chunk=256):
    return match_anchors(gt, anchors, *PAPER, low_quality_matches, chunk)[:2]


def test_hand_computed_labels():
    # Anchors: 10x10 squares shifted along x; box 0 is [0, 0, 10, 10].
    anchors = torch.tensor(
        [[0.0, 0, 10, 10], [2, 0, 12, 10], [3, 0, 13, 10], [4, 0, 14, 10], [6, 0, 16, 10], [50, 50, 60, 60]]
    )
    # IoUs with box 0: 1, 80/120=.667, 70/130=.538, 60/140=.429, 40/160=.25, 0
    gt = torch.tensor([[0.0, 0, 10, 10]])
    idxs, labels = paper_match(gt, anchors)
    assert labels.tolist() == [1, 1, 1, -1, 0, 0]
    assert idxs.tolist() == [0] * 6


def test_low_quality_match_rescues_a_small_box():
    anchors = torch.tensor([[0.0, 0, 32, 32], [32, 0, 64, 32]])
    gt = torch.tensor([[2.0, 2, 12, 12]])  # IoU 100/1024 with anchor 0, 0 with anchor 1
    _, labels = paper_match(gt, anchors)
    assert labels.tolist() == [1, 0]
    _, labels = paper_match(gt, anchors, low_quality_matches=False)
    assert labels.tolist() == [0, 0]


def test_each_anchor_takes_its_highest_iou_box():
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    gt = torch.tensor([[0.0, 0, 10, 12], [0.0, 0, 10, 10]])  # IoU 10/12 and 1
    idxs, labels = paper_match(gt, anchors)
    assert idxs.tolist() == [1] and labels.tolist() == [1]


def test_chunked_equals_detectron2_matcher():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(700, 2, generator=generator) * 200
    anchors = torch.cat([xy, xy + 8 + torch.rand(700, 2, generator=generator) * 40], dim=1)
    gxy = torch.rand(37, 2, generator=generator) * 200
    gt = torch.cat([gxy, gxy + 5 + torch.rand(37, 2, generator=generator) * 60], dim=1)
    # The paper's rule, and other thresholds/labels/low-quality settings a Matcher may carry.
    for thresholds, labels_, low_quality in (PAPER + (True,), ([0.3, 0.6], [0, -1, 1], False), ([0.5], [0, 1], True), ([0.2, 0.4, 0.7], [0, -1, 0, 1], True)):
        matcher = Matcher(thresholds, labels_, allow_low_quality_matches=low_quality)
        ref_idxs, ref_labels = matcher(pairwise_iou(Boxes(gt), Boxes(anchors)))
        for chunk in (1, 5, 37, 256):
            idxs, labels, best_iou = match_anchors(gt, anchors, thresholds, labels_, low_quality, chunk)
            assert torch.equal(best_iou, pairwise_iou(Boxes(gt), Boxes(anchors)).max(dim=0).values)
            assert torch.equal(labels.long(), ref_labels.long()), (thresholds, chunk)
            foreground = labels == 1
            assert foreground.sum() > 0
            assert torch.equal(idxs[foreground], ref_idxs[foreground])


def test_iou_blocks_are_bounded_by_the_chunk(monkeypatch):
    from retinanet_d2.modeling import assignment

    shapes = []

    def recording_iou(a, b):
        shapes.append((len(a), len(b)))
        return pairwise_iou(a, b)

    monkeypatch.setattr(assignment, "pairwise_iou", recording_iou)
    gt = torch.tensor([[0.0, 0, 10, 10]]).repeat(1000, 1) + torch.arange(1000.0)[:, None]
    anchors = torch.tensor([[0.0, 0, 16, 16]]).repeat(50, 1) + torch.arange(50.0)[:, None] * 20
    paper_match(gt, anchors, chunk=128)
    assert max(rows for rows, _ in shapes) == 128
    assert sum(rows for rows, _ in shapes) == 2 * 1000  # two passes: best per anchor, best per box
