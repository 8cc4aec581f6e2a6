"""COCO evaluation at C++ speed where detectron2 has no compiled ops: faster-coco-eval's COCOeval
gives pycocotools' 12 metrics, and detectron2's stock COCOEvaluator uses it."""
import contextlib
import io
import json

import numpy as np
import torch
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from retinanet_d2.benchmark import synthetic_coco


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
