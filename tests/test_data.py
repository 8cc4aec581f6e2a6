import json
import math
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from retinanet_d2.data import check_dataset_files
from retinanet_d2.data.shapes import CLASSES, SPLITS, ShapesSplit, generate_split, render_image


def test_generation_is_deterministic_and_cached(tmp_path):
    split = ShapesSplit("s", num_images=6, image_size=96, seed=7)
    first = generate_split(str(tmp_path / "a"), split)
    second = generate_split(str(tmp_path / "b"), split)
    with open(first) as f, open(second) as g:
        assert json.load(f) == json.load(g)
    mtime = os.path.getmtime(first)
    assert generate_split(str(tmp_path / "a"), split) == first
    assert os.path.getmtime(first) == mtime  # reused, not rewritten


def test_objects_follow_the_specification():
    split = ShapesSplit("s", num_images=0, image_size=256, seed=0)
    rng = np.random.default_rng(0)
    counts, sides, categories = [], [], set()
    for _ in range(200):
        image, objects = render_image(rng, split)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        counts.append(len(objects))
        for category, (x, y, w, h) in objects:
            assert w == h and 0 <= x and x + w <= 256 and 0 <= y and y + h <= 256
            sides.append(w)
            categories.add(category)
    assert min(counts) >= 1 and max(counts) == 8
    assert min(sides) >= 10 and max(sides) <= 0.7 * 256
    assert categories == {0, 1, 2}
    # log-uniform sizes: about half of them below the geometric mean of the range
    below = np.mean(np.array(sides) < math.sqrt(10 * 0.7 * 256))
    assert 0.4 < below < 0.6


def test_registered_splits_load_as_detectron2_dicts():
    dicts = DatasetCatalog.get("shapes_tiny_val")
    assert len(dicts) == SPLITS["shapes_tiny_val"].num_images
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert MetadataCatalog.get("shapes_tiny_val").thing_classes == list(CLASSES)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}


def test_missing_coco_files_are_named(tmp_path, monkeypatch):
    MetadataCatalog.get("test_missing_coco").set(
        json_file=str(tmp_path / "annotations.json"), image_root=str(tmp_path / "images")
    )
    with pytest.raises(FileNotFoundError, match="annotations.json.*images"):
        check_dataset_files("test_missing_coco")


