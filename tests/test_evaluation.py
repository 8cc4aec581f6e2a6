"""COCO evaluation at C++ speed where detectron2 has no compiled ops: faster-coco-eval's COCOeval
gives pycocotools' 12 metrics, and detectron2's stock COCOEvaluator uses it."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from lab.benchmark import synthetic_coco


def test_faster_coco_eval_gives_pycocotools_twelve_metrics():
    gt, results = synthetic_coco(num_images=150, detections_per_image=60, num_classes=10, seed=3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        stats = {}
        for name, evaluator in (("pycocotools", COCOeval), ("faster", COCOeval_faster)):
            run = evaluator(coco_gt, coco_dt, "bbox")
            run.evaluate(), run.accumulate(), run.summarize()
            stats[name] = np.array(run.stats[:12])
    assert 0.05 < stats["pycocotools"][0] < 0.95  # a non-trivial AP
    np.testing.assert_allclose(stats["faster"], stats["pycocotools"], rtol=0, atol=1e-12)


def test_stock_coco_evaluator_fast_path_equals_the_official_one(tmp_path):
    gt, results = synthetic_coco(num_images=40, detections_per_image=30, num_classes=5, seed=4)
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(gt))
    name = "synthetic_eval_test"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    DatasetCatalog.get(name)  # sets the category id mapping
    contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    per_image = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append(r)
    evaluated = {}
    for fast in (True, False):
        evaluator = COCOEvaluator(name, output_dir=None, use_fast_impl=fast)
        evaluator.reset()
        for image_id, rows in per_image.items():
            instances = Instances((480, 640))
            boxes = torch.tensor([r["bbox"] for r in rows], dtype=torch.float64)
            instances.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).float())
            instances.scores = torch.tensor([r["score"] for r in rows])
            instances.pred_classes = torch.tensor([contiguous[r["category_id"]] for r in rows])
            evaluator.process([{"image_id": image_id}], [{"instances": instances}])
        evaluated[fast] = evaluator.evaluate()["bbox"]
    assert evaluated[True].keys() == evaluated[False].keys() and len(evaluated[True]) == 6 + 5
    for key, value in evaluated[False].items():
        assert np.isfinite(value) and abs(evaluated[True][key] - value) < 1e-9, key


def test_train_nets_evaluator_scores_as_many_detections_as_the_model_keeps(tmp_path):
    """One image with 200 objects and 200 exact detections: scored at 300 (TEST.DETECTIONS_PER_IMAGE
    300) every object is found (AP 100); at detectron2's default 100 the recall stops at 0.5, so the
    101-point AP50 is 51 / 101 (precision 1 at recall 0, 0.01, ..., 0.50; 0 beyond)."""
    import retinanet_d2
    from helpers import INSTANT
    from retinanet_d2.evaluation import build_coco_evaluator

    boxes = [[10.0 * (i % 20), 10.0 * (i // 20), 8.0, 8.0] for i in range(200)]  # XYWH, disjoint
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 64.0, "iscrowd": 0}
                        for i, b in enumerate(boxes)],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    register_coco_instances("dense_eval_test", {}, str(tmp_path / "gt.json"), str(tmp_path))
    DatasetCatalog.get("dense_eval_test")
    instances = Instances((100, 200))
    xywh = torch.tensor(boxes)
    instances.pred_boxes = Boxes(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    instances.scores = torch.linspace(1.0, 0.5, 200)
    instances.pred_classes = torch.zeros(200, dtype=torch.int64)
    ap50 = {}
    for kept in (300, 100):
        cfg = retinanet_d2.load_config(INSTANT, ["TEST.DETECTIONS_PER_IMAGE", str(kept)])
        evaluator = build_coco_evaluator(cfg, "dense_eval_test", str(tmp_path / str(kept)))
        evaluator.reset()
        evaluator.process([{"image_id": 1}], [{"instances": instances}])
        ap50[kept] = evaluator.evaluate()["bbox"]["AP50"]
    assert ap50[300] == 100.0
    assert ap50[100] == pytest.approx(100 * 51 / 101)
