"""Test-time augmentation (TEST.AUG.*): one scale without flips is plain inference; a flip adds the
mirrored image's detections, mirrored back, merged by class-wise NMS; train_net.py reports "bbox_TTA"."""
import json

import pytest
import torch

from detectron2.layers import batched_nms
from detectron2.structures import Boxes

from helpers import INSTANT, image_with_boxes, run_train_net, tiny_cfg, well_scaled_model
from retinanet_d2.modeling.tta import FocalRetinaNetWithTTA

# The input as the test loader gives it: the image of an original 240 x 336 photo resized to 160 x 224.
ORIGINAL = (240, 336)


def model_and_input(**tta):
    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TEST": 160, "INPUT.MAX_SIZE_TEST": 1000,
                      "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 20,
                      **{f"TEST.AUG.{k}": v for k, v in tta.items()}})
    model = well_scaled_model(cfg).eval()
    image = image_with_boxes()["image"]
    return cfg, model, {"image": image, "height": ORIGINAL[0], "width": ORIGINAL[1]}


def test_one_scale_without_flip_is_plain_inference():
    cfg, model, x = model_and_input(MIN_SIZES=(160,), MAX_SIZE=1000, FLIP=False)
    with torch.no_grad():
        plain = model([x])[0]["instances"]
        augmented = FocalRetinaNetWithTTA(cfg, model)([x])[0]["instances"]
    assert len(plain) > 10 and augmented.image_size == plain.image_size == ORIGINAL
    assert torch.equal(augmented.scores, plain.scores) and torch.equal(augmented.pred_classes, plain.pred_classes)
    torch.testing.assert_close(augmented.pred_boxes.tensor, plain.pred_boxes.tensor, rtol=0, atol=1e-4)


def raw_detections(model, image):
    """The model's detections of one (3, H, W) image in its pixels, before detector_postprocess."""
    batch = model.preprocess_image([{"image": image}])
    features = [model.backbone(batch.tensor)[f] for f in model.head_in_features]
    return model.forward_inference(batch, features, model.head(features))[0]


def test_flip_merges_the_mirrored_images_detections():
    cfg, model, x = model_and_input(MIN_SIZES=(160,), MAX_SIZE=1000, FLIP=True)
    scale = ORIGINAL[1] / x["image"].shape[2]  # 336 / 224 = 240 / 160 = 1.5
    with torch.no_grad():
        augmented = FocalRetinaNetWithTTA(cfg, model)([x])[0]["instances"]
        plain = raw_detections(model, x["image"])
        mirrored = raw_detections(model, x["image"].flip(-1))
    flipped_back = mirrored.pred_boxes.tensor.clone()
    flipped_back[:, [0, 2]] = x["image"].shape[2] - mirrored.pred_boxes.tensor[:, [2, 0]]
    boxes = torch.cat([plain.pred_boxes.tensor, flipped_back]) * scale
    scores = torch.cat([plain.scores, mirrored.scores])
    classes = torch.cat([plain.pred_classes, mirrored.pred_classes])
    keep = batched_nms(boxes, scores, classes, model.test_nms_thresh)[:20]
    expected = Boxes(boxes[keep])
    expected.clip(ORIGINAL)
    nonempty = expected.nonempty()
    assert len(augmented) == int(nonempty.sum()) > 5
    assert torch.equal(augmented.scores, scores[keep][nonempty])
    assert torch.equal(augmented.pred_classes, classes[keep][nonempty])
    torch.testing.assert_close(augmented.pred_boxes.tensor, expected.tensor[nonempty], rtol=0, atol=1e-3)
    assert bool((augmented.scores[:, None] == mirrored.scores[None]).any())  # the flip contributes


def test_empty_sizes_are_refused():
    cfg, model, _ = model_and_input(MIN_SIZES=())
    with pytest.raises(ValueError, match="TEST.AUG.MIN_SIZES is empty"):
        FocalRetinaNetWithTTA(cfg, model)


@pytest.mark.e2e
def test_train_net_eval_reports_tta_beside_plain(tmp_path):
    run_train_net("--config-file", INSTANT, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "1",
                  "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(112, 128)", "TEST.AUG.MAX_SIZE", "200",
                  "MODEL.FOCAL_RETINANET.ERROR_ANALYSIS", "False")
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    final = records[-1]
    assert "bbox/AP" in final and "bbox_TTA/AP" in final
    assert (tmp_path / "inference_TTA" / "coco_instances_results.json").exists()
