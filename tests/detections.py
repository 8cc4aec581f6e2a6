"""Comparing detections with a source framework's: torchvision's reference inputs and outputs, and
the matching rules the weights and source-reference tests share."""
import numpy as np
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

TORCHVISION = {"v1": (retinanet_resnet50_fpn, "retinanet_resnet50_fpn"), "v2": (retinanet_resnet50_fpn_v2, "retinanet_resnet50_fpn_v2")}
# An input torchvision does not resize (short side 384, long 512) and no model pads (both
# divisible by 128, P7's stride).
HEIGHT, WIDTH = 384, 512

BOX_TOL, SCORE_TOL = 0.5, 1e-4  # matched_fraction: px per box coordinate, score


def torchvision_detections(reference, image):
    """torchvision's detections on a 0-255 RGB image, without the boxes that are empty after
    clipping (detectron2 drops those), labels as COCO category ids."""
    with torch.no_grad():
        out = reference([image / 255])[0]
    boxes = out["boxes"]
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[nonempty], out["scores"][nonempty], out["labels"][nonempty]


def assert_same_detection_sets(ours, reference):
    """(boxes XYXY, scores, labels) of two detectors equal as sets: sorted by label, x1, y1, since
    detections with equal scores up to float rounding may come in either order."""
    def canonical(boxes, scores, labels):
        order = np.lexsort((boxes[:, 1].numpy(), boxes[:, 0].numpy(), labels.numpy()))
        return boxes[order], scores[order], labels[order]

    (boxes, scores, labels), (ref_boxes, ref_scores, ref_labels) = canonical(*ours), canonical(*reference)
    assert len(boxes) == len(ref_boxes) > 100
    torch.testing.assert_close(boxes, ref_boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    assert torch.equal(labels, ref_labels)


def matched_fraction(ours, reference, top=100):
    """Share of the reference's `top` highest detections that ours contains: same label, score
    within SCORE_TOL, every box coordinate within BOX_TOL px. Each ours matches at most once."""
    boxes, scores, labels = (np.asarray(x, dtype=np.float64) for x in ours)
    ref_boxes, ref_scores, ref_labels = (np.asarray(x, dtype=np.float64)[:top] for x in reference)
    used = np.zeros(len(boxes), dtype=bool)
    matched = 0
    for box, score, label in zip(ref_boxes, ref_scores, ref_labels):
        fits = (~used) & (labels == label) & (np.abs(scores - score) <= SCORE_TOL)
        fits &= np.abs(boxes - box).max(axis=1) <= BOX_TOL
        if fits.any():
            used[np.argmax(fits)] = True
            matched += 1
    return matched / max(len(ref_boxes), 1)
