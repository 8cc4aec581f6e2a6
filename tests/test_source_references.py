"""Converted weights give the source framework's own detections: Detectron's test path (an
independent NumPy reference run on the raw blobs, detectron_reference.py) and torchvision's own model,
on the same preprocessed image, for a typical classifier and for one made to fire on many anchors (so
that thresholds, top-k, NMS and the detection cap all decide)."""
import os

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

import detectron_reference
import retinanet_d2
from helpers import CONFIGS, as_detectron2_retinanet, tiny_cfg, well_scaled_model
from retinanet_d2.checkpoint import load_model_weights
from retinanet_d2.checkpoint.torchvision_format import coco_category_ids
from detections import HEIGHT, TORCHVISION, WIDTH, matched_fraction, torchvision_detections  # 384x512: no padding, no resizing
from weights_files import detectron_blobs, randomize_norms, torchvision_reference, write_pickle

MIN_MATCHED = 0.99  # share of the reference's detections ours must contain (detections.matched_fraction)
TINY = {  # the tiny network of helpers.tiny_cfg, as config overrides
    "MODEL.DEVICE": "cpu", "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.FPN.OUT_CHANNELS": 32, "MODEL.RETINANET.NUM_CONVS": 1, "MODEL.RETINANET.NUM_CLASSES": 5,
    "MODEL.PIXEL_STD": [57.375, 57.120, 58.395],  # keeps the random network's activations O(1)
}


def detectron_config(**overrides):
    opts = {**TINY, **overrides}
    return retinanet_d2.load_config(
        os.path.join(CONFIGS, "detectron", "retinanet_R50_FPN_1x.yaml"), [x for kv in opts.items() for x in kv]
    )


# Classifier biases: "typical" scores spread around 0.12; "firing": classes 0 and 2 high on most
# anchors (more candidates than top-k on P3; NMS and the detection cap decide); "quiet": almost
# nothing above 0.05, so Detectron's threshold 0.0 on P7 decides.
CLASSIFIERS = {"typical": -2.0, "firing": -2.0, "quiet": -4.5}


def random_detectron_blobs(classifier: str):
    """Blobs of a random tiny RetinaNet in Detectron's names and anchor order, with the classifier
    bias of CLASSIFIERS[classifier] (and +1 on classes 0 and 2 when "firing"). Box
    deltas are scaled to a trained model's range (|d| ~ 0.3), so that boxes stay near their anchors."""
    ref = well_scaled_model(as_detectron2_retinanet(tiny_cfg()), seed=3)
    randomize_norms(ref, seed=3)
    blobs = detectron_blobs(ref)
    blobs["retnet_bbox_pred_fpn3_w"] *= 0.1
    bias = blobs["retnet_cls_pred_fpn3_b"].reshape(9, 5)
    bias[:] = CLASSIFIERS[classifier]
    if classifier == "firing":
        bias[:, [0, 2]] = 1.0
    if classifier == "quiet":  # logits near the bias: probabilities near 0.018
        blobs["retnet_cls_pred_fpn3_w"] *= 0.2
    return blobs


def normalise(cfg, image):
    """The model's input normalisation, done outside it for the reference: (image - mean) / std."""
    return (image - torch.tensor(cfg.MODEL.PIXEL_MEAN)[:, None, None]) / torch.tensor(cfg.MODEL.PIXEL_STD)[:, None, None]


def ours_on(model, image):
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": HEIGHT, "width": WIDTH}])[0]["instances"]
    return out.pred_boxes.tensor.numpy(), out.scores.numpy(), out.pred_classes.numpy()


@pytest.fixture(scope="module")
def image():
    return (torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(11)) * 255).round()


@pytest.mark.parametrize("classifier", sorted(CLASSIFIERS))
def test_detectron_pickle_gives_detectrons_own_detections(tmp_path, image, classifier):
    blobs = random_detectron_blobs(classifier)
    path = write_pickle({"blobs": blobs}, tmp_path / "model_final.pkl")
    cfg = detectron_config()
    model = build_model(cfg)
    load_model_weights(model, path)
    normalised = normalise(cfg, image)
    ref_boxes, ref_scores, ref_labels = detectron_reference.detect(blobs, normalised, num_convs=1)
    ref_boxes = ref_boxes + np.array([0, 0, 1, 1])  # +1 convention -> continuous (as its COCO json)
    ours = ours_on(model, image)
    assert matched_fraction(ours, (ref_boxes, ref_scores, ref_labels)) >= MIN_MATCHED
    assert len(ours[0]) == len(ref_boxes)
    if classifier == "quiet":  # every detection comes from P7's threshold 0.0 (without it: none)
        assert len(ref_boxes) > 10 and ref_scores.max() <= 0.05
    else:
        assert len(ref_boxes) == 100
    if classifier == "firing":  # more candidates than top-k on P3; NMS and the cap both cut
        assert ref_scores[-1] > 0.5


def test_detectron_reference_fails_without_the_anchor_offset(tmp_path, image):
    """The check can fail: detectron2's default offset 0.0 shifts Detectron's anchors by half a stride."""
    blobs = random_detectron_blobs("typical")
    path = write_pickle({"blobs": blobs}, tmp_path / "model_final.pkl")
    cfg = detectron_config(**{"MODEL.ANCHOR_GENERATOR.OFFSET": 0.0})
    model = build_model(cfg)
    load_model_weights(model, path)
    normalised = normalise(cfg, image)
    ref = detectron_reference.detect(blobs, normalised, num_convs=1)
    ref = (ref[0] + np.array([0, 0, 1, 1]), ref[1], ref[2])
    assert matched_fraction(ours_on(model, image), ref) < 0.2


def test_detectron_anchors_hand_derived():
    # stride 8, size 32, ratio 0.5: w0 = round(sqrt(64 / 0.5)) = 11, h0 = round(5.5) = 6 (half to
    # even); scaled by 4: 44 x 24, centred at 3.5 in the +1 convention: (3.5 -+ 21.5, 3.5 -+ 11.5).
    np.testing.assert_allclose(detectron_reference.generate_anchors(8, 32, 0.5), [-18.0, -8.0, 25.0, 15.0])
    # ratio 2: w0 = round(sqrt(32)) = 6, h0 = 12 -> 24 x 48.
    np.testing.assert_allclose(detectron_reference.generate_anchors(8, 32, 2.0), [-8.0, -20.0, 15.0, 27.0])


@pytest.mark.parametrize("fire", [False, True], ids=["typical", "firing"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_torchvision_weights_give_torchvisions_own_detections(tmp_path, image, version, fire):
    builder, name = TORCHVISION[version]
    reference = torchvision_reference(builder, min_size=HEIGHT, max_size=WIDTH)
    if fire:
        with torch.no_grad():  # COCO ids 1 and 3 (person, car) fire on most anchors
            reference.head.classification_head.cls_logits.bias.view(9, 91)[:, [1, 3]] = 1.0
    path = str(tmp_path / f"{name}.pth")
    torch.save(reference.state_dict(), path)
    model = build_model(retinanet_d2.load_config(os.path.join(CONFIGS, "torchvision", f"{name}.yaml"), ["MODEL.DEVICE", "cpu"]))
    load_model_weights(model, path)
    ref = tuple(x.numpy() for x in torchvision_detections(reference, image))
    boxes, scores, classes = ours_on(model, image)
    ours = (boxes, scores, np.array(coco_category_ids())[classes])
    assert len(ref[0]) > 100
    assert matched_fraction(ours, ref) >= MIN_MATCHED
