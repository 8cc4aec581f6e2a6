"""tools/analyze_anchors.py on hand-made datasets with derivable numbers: 8 px boxes centred on the
stride-8 grid of a 128 px image, which the demo's anchors (16-25 px on P3) cannot match (best IoU
8^2 / 16^2 = 0.25), and the suggested setting that matches them exactly."""
import json
import os
import subprocess
import sys

import pytest

from coco_files import image_record, write_coco, write_image
from helpers import INSTANT, REPO

CENTRES = [(32, 32), (32, 96), (96, 32), (96, 96)]
ANCHORS_PER_IMAGE = (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1) * 9  # P3-P7 of a 128 px image, 9 anchors each


def analyse(tmp_path, *overrides):
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "analyze_anchors.py"), "--config-file", INSTANT,
         "--dataset", "small_boxes", str(tmp_path / "annotations.json"), str(tmp_path),
         "--dataset-name", "small_boxes", "--output-dir", str(out), *overrides],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "anchor_fit.json") as f:
        return json.load(f), result.stdout, out


@pytest.fixture
def small_boxes(tmp_path):
    write_image(tmp_path / "a.png", size=(128, 128))
    boxes = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x - 4, y - 4, 8, 8], "iscrowd": 0, "area": 64}
             for i, (x, y) in enumerate(CENTRES)]
    write_coco(tmp_path, [image_record(1, "a.png", width=128, height=128)], boxes)
    return tmp_path


@pytest.mark.e2e
def test_boxes_no_anchor_can_match_are_reported_and_a_fitting_setting_suggested(small_boxes):
    report, printed, out = analyse(small_boxes)
    assert report["boxes"] == 4 and report["anchors_per_image"] == ANCHORS_PER_IMAGE
    assert report["best_iou_percentiles"]["p5"] == pytest.approx(0.25, abs=1e-6)
    assert report["best_iou_percentiles"]["p95"] == pytest.approx(0.25, abs=1e-6)
    assert report["share_below_threshold"] == 1.0
    assert report["below_threshold_by_size"] == {"0-16": {"boxes": 4, "below_threshold": 1.0}}
    assert report["foreground_anchors_per_box_mean"] == 0.0
    suggestion = report["suggestion"]
    assert suggestion["octave_base_scale"] == 1.0 and suggestion["share_below_threshold"] == 0.0
    assert suggestion["mean_best_iou"] == pytest.approx(1.0)
    assert "MODEL.FOCAL_RETINANET.OCTAVE_BASE_SCALE: 1.0" in printed
    assert (out / "anchor_fit.png").stat().st_size > 0


@pytest.mark.e2e
def test_the_suggestion_applied_matches_every_box(small_boxes):
    report, _, _ = analyse(small_boxes)
    overrides = [part for line in report["suggestion"]["config_lines"] for part in line.split(": ", 1)]
    applied, _, _ = analyse(small_boxes, *[v.strip('"') for v in overrides])
    assert applied["share_below_threshold"] == 0.0
    assert applied["best_iou_percentiles"]["p50"] == pytest.approx(1.0)
    # At each centre: the 8 px anchor (IoU 1) and its 1:2 and 2:1 versions (0.547 each), the 10.1 px
    # ones (0.630, 0.525, 0.525); the 12.7 px ones reach 0.397, below the background threshold 0.4, and
    # no other anchor overlaps: 6 foreground anchors a box, none ignored; 3 classes.
    assert applied["foreground_anchors_per_box_mean"] == 6.0
    assert applied["anchors_per_foreground"] == pytest.approx(ANCHORS_PER_IMAGE / 24)
    assert applied["negatives_per_positive_pair"] == pytest.approx((ANCHORS_PER_IMAGE * 3 - 24) / 24)
