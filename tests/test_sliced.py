"""Sliced inference (modeling/sliced.py): one tile over the whole image is plain inference; an object
on a tile border is reported once, with the box of the tile that sees it whole; a scene's detections do
not depend on the tile batch; the settings are checked by key."""
import json

import pytest
import torch
from torch import nn

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import retinanet_d2
from helpers import INSTANT, image_with_boxes, tiny_cfg, train_net_main, well_scaled_model
from retinanet_d2.checkpoint import load_model_weights
from retinanet_d2.engine import run_parts
from retinanet_d2.modeling.sliced import SlicedInference, tile_starts


def test_tile_starts_cover_the_side_with_full_tiles():
    assert tile_starts(100, 128, 32) == [0]
    assert tile_starts(200, 128, 64) == [0, 36, 72]  # 2 tiles would share 56 < 64 px: 3, spread evenly
    assert tile_starts(300, 100, 20) == [0, 67, 133, 200]
    assert tile_starts(1000, 256, 0) == [0, 248, 496, 744]
    for length, tile, overlap in ((200, 128, 64), (300, 100, 20), (1000, 256, 0)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


def test_one_tile_over_the_whole_image_is_plain_inference():
    model = well_scaled_model(tiny_cfg()).eval()
    x = image_with_boxes(height=160, width=224, seed=4)
    inputs = {"image": x["image"], "height": 320, "width": 448}  # and the rescaling to the original size
    with torch.no_grad():
        plain = model([inputs])[0]["instances"]
        sliced = SlicedInference(model, tile_size=256, overlap=32, batch_size=1)([inputs])[0]["instances"]
    assert len(plain) > 10
    assert torch.equal(sliced.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(sliced.scores, plain.scores) and torch.equal(sliced.pred_classes, plain.pred_classes)


class BrightRectangles(nn.Module):
    """A stand-in detector: in each tile, the bounding box of its bright pixels (class 0, score .9),
    as a perfect detector reports the part of an object a tile shows."""

    test_nms_thresh, max_detections_per_image = 0.5, 100

    def detect_unscaled(self, images):
        found = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 128, as_tuple=True)
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if len(xs) else []
            found.append(Instances(image.shape[-2:], pred_boxes=Boxes(torch.tensor(box, dtype=torch.float32).reshape(-1, 4)),
                                   scores=torch.full((len(box),), 0.9), pred_classes=torch.zeros(len(box), dtype=torch.int64)))
        return found


def test_an_object_on_a_tile_border_is_reported_once_with_the_whole_box():
    """A 40 x 40 square at x 90-130, y 40-80 of a 200 x 200 image; tiles of 128 overlapping by >= 64
    (0-128, 36-164, 72-200 on each side): the left column sees it cut at x 128, the bottom row at y 72;
    the other four see it whole; it is reported once, with their box."""
    image = torch.zeros(3, 200, 200)
    image[:, 40:80, 90:130] = 255
    found = SlicedInference(BrightRectangles(), tile_size=128, overlap=64, batch_size=3)([{"image": image}])[0]["instances"]
    assert found.pred_boxes.tensor.tolist() == [[90.0, 40.0, 130.0, 80.0]]


def test_objects_larger_than_a_tile_are_kept_in_pieces_not_lost():
    """No 128 px tile (at x 0, 64, 128) sees a 200 px bar whole: every piece is cut, none is dropped
    (they overlap by IoU 0.39, under the NMS threshold)."""
    image = torch.zeros(3, 128, 256)
    image[:, 10:30, 28:228] = 255
    found = SlicedInference(BrightRectangles(), tile_size=128, overlap=16, batch_size=2)([{"image": image}])[0]["instances"]
    assert sorted(found.pred_boxes.tensor.tolist()) == [[28.0, 10.0, 128.0, 30.0], [64.0, 10.0, 192.0, 30.0],
                                                        [128.0, 10.0, 228.0, 30.0]]


def test_a_scenes_detections_do_not_depend_on_the_tile_batch():
    model = well_scaled_model(tiny_cfg()).eval()
    scene = {"image": image_with_boxes(height=300, width=420, seed=5)["image"]}
    with torch.no_grad():
        one, many = (SlicedInference(model, tile_size=128, overlap=32, batch_size=b)([scene])[0]["instances"] for b in (1, 7))
    assert len(one) == len(many) > 10
    # Equal up to float32 rounding: a batch of 7 tiles runs other convolution kernels than one tile.
    torch.testing.assert_close(many.pred_boxes.tensor, one.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(many.scores, one.scores, rtol=0, atol=1e-5)
    assert torch.equal(many.pred_classes, one.pred_classes)


@pytest.mark.parametrize("overrides, key", [
    (["MODEL.FOCAL_RETINANET.TILE_SIZE", "64", "MODEL.FOCAL_RETINANET.TILE_OVERLAP", "64"], "MODEL.FOCAL_RETINANET.TILE_OVERLAP"),
    (["MODEL.FOCAL_RETINANET.TILE_SIZE", "256", "MODEL.FOCAL_RETINANET.TILE_BATCH_SIZE", "0"], "MODEL.FOCAL_RETINANET.TILE_BATCH_SIZE"),
])
def test_tile_settings_that_make_no_tiling_are_refused_by_key(overrides, key):
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        run_parts(retinanet_d2.load_config(INSTANT, overrides)).check_values()


def test_evaluation_and_the_predictor_use_tiles_when_asked():
    """Evaluation (engine.loop.test) and the Predictor run parts.inference_model(model): the model
    itself by default, tiles of TILE_SIZE / TILE_OVERLAP / TILE_BATCH_SIZE when TILE_SIZE > 0."""
    model = nn.Identity()
    assert run_parts(retinanet_d2.load_config(INSTANT)).inference_model(model) is model
    parts = run_parts(retinanet_d2.load_config(INSTANT, ["MODEL.FOCAL_RETINANET.TILE_SIZE", "256"]))
    wrapped = parts.inference_model(model)
    assert isinstance(wrapped, SlicedInference) and (wrapped.tile_size, wrapped.overlap, wrapped.batch_size) == (256, 128, 4)


@pytest.mark.e2e
def test_eval_only_with_tiles_scores_the_sliced_detections(tmp_path):
    """train_net.py --eval-only with TILE_SIZE 64 (the 128 px test images in 3 x 3 tiles): the results
    file holds exactly what SlicedInference gives for the same weights and image."""
    cfg = retinanet_d2.load_config(INSTANT, ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    torch.save({"model": well_scaled_model(cfg).state_dict()}, tmp_path / "weights.pth")
    tiles = ["MODEL.FOCAL_RETINANET.TILE_SIZE", "64", "MODEL.FOCAL_RETINANET.TILE_OVERLAP", "16"]
    train_net_main("--config-file", INSTANT, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "weights.pth"),
                   "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", *tiles, "OUTPUT_DIR", str(tmp_path / "eval"))
    results = json.loads((tmp_path / "eval" / "inference" / "coco_instances_results.json").read_text())
    record = DatasetCatalog.get("shapes_tiny_val")[0]
    model = build_model(cfg).eval()
    load_model_weights(model, str(tmp_path / "weights.pth"))
    inputs = DatasetMapper(cfg, is_train=False)(record)
    with torch.no_grad():
        expected = SlicedInference(model, tile_size=64, overlap=16, batch_size=4)([inputs])[0]["instances"]
    mine = sorted((r for r in results if r["image_id"] == record["image_id"]), key=lambda r: -r["score"])
    assert len(mine) == min(len(expected), 100) > 0
    torch.testing.assert_close(torch.tensor([r["score"] for r in mine]), expected.scores[: len(mine)], rtol=0, atol=1e-6)
