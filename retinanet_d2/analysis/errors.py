"""Where a detector fails on a COCO-format dataset, from pycocotools' own evaluation: per-class AP,
AP50 and recall from COCOeval's precision and recall arrays; precision, recall and F1 at a score
threshold, a confusion matrix with background and each image's errors from COCOeval's per-image
matches at IoU 0.5 (greedy by score, so the matches of the detections above a threshold are those
of a matching of those detections alone).

The confusion matrix has a row per ground-truth class and a column per predicted class, plus
"background" (last row: detections that match nothing; last column: boxes no detection found).
COCOeval matches within a class; a detection it leaves unmatched is counted as confusing the
unmatched box of another class it overlaps most (IoU >= 0.5, each box once, highest score first).
Crowd boxes and the detections COCOeval ignores (matched to crowds) are left out everywhere.
"""
import contextlib
import io
from typing import Dict, List, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MATCH_IOU = 0.5


class ImageErrors(NamedTuple):
    """One image's outcome at the score threshold: true positives per class index, and each error
    as a dict (kind "missed" / "background" / "confused", gt_class, pred_class, box XYWH, score)."""

    image_id: int
    true_positives: Dict[int, int]
    errors: List[Dict]


def run_cocoeval(coco_gt: COCO, results: List[Dict], max_dets: int) -> COCOeval:
    """COCOeval (bbox) of ``results`` (COCO results: image_id, category_id, bbox XYWH, score) with
    maxDets (1, 10, max_dets), evaluated and accumulated; its progress prints are not shown."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                       "annotations": [dict(r, id=i + 1, area=r["bbox"][2] * r["bbox"][3], iscrowd=0)
                                       for i, r in enumerate(results)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.params.maxDets = [1, 10, max_dets]
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def _mean_valid(values: np.ndarray):
    """Mean of the entries > -1 (COCOeval's "no data"), as a percentage; None if there are none."""
    valid = values[values > -1]
    return float(valid.mean() * 100) if valid.size else None


def per_class_metrics(evaluation: COCOeval, class_names: List[str]) -> List[Dict]:
    """Per category (COCOeval's order): AP (IoU .5:.95), AP50, recall at IoU .5 and AR (IoU .5:.95),
    at all areas and the largest maxDets, in percent (None where the class has no boxes)."""
    precision, recall = evaluation.eval["precision"], evaluation.eval["recall"]  # [T,R,K,A,M], [T,K,A,M]
    rows = []
    for k, category in enumerate(evaluation.params.catIds):
        rows.append({"class": class_names[k], "category_id": int(category),
                     "AP": _mean_valid(precision[:, :, k, 0, -1]), "AP50": _mean_valid(precision[0, :, k, 0, -1]),
                     "recall50": _mean_valid(recall[0, k, 0, -1:]), "AR": _mean_valid(recall[:, k, 0, -1])})
    return rows


def precision_recall_curves(evaluation: COCOeval) -> Dict[str, np.ndarray]:
    """COCOeval's interpolated precision at its 101 recall points, IoU 0.5, all areas, largest
    maxDets: {"recall": (101,), "precision": (K, 101) with -1 where a class has no boxes}."""
    return {"recall": np.asarray(evaluation.params.recThrs), "precision": evaluation.eval["precision"][0, :, :, 0, -1].T}


def _box_iou(dt_boxes: List, gt_boxes: List) -> np.ndarray:
    """(D, G) IoU of XYWH boxes (pycocotools' iou)."""
    if not dt_boxes or not gt_boxes:
        return np.zeros((len(dt_boxes), len(gt_boxes)))
    return np.asarray(mask_utils.iou(dt_boxes, gt_boxes, [0] * len(gt_boxes)))


def image_errors(evaluation: COCOeval, score_thresh: float) -> List[ImageErrors]:
    """Each image's true positives and errors among the detections scoring >= ``score_thresh``, at
    IoU MATCH_IOU, in COCOeval's image order (classes as indices of its categories)."""
    params = evaluation.params
    class_of = {int(c): k for k, c in enumerate(params.catIds)}
    num_images, threshold = len(params.imgIds), params.iouThrs.tolist().index(MATCH_IOU)
    by_image = {i: {"tp": {}, "fp": [], "missed": []} for i in params.imgIds}
    for k in range(len(params.catIds)):
        for i, image_id in enumerate(params.imgIds):
            record = evaluation.evalImgs[k * len(params.areaRng) * num_images + i]  # area "all"
            if record is None:
                continue
            kept = np.asarray(record["dtScores"]) >= score_thresh
            matches = np.asarray(record["dtMatches"][threshold])
            ignored = np.asarray(record["dtIgnore"][threshold], dtype=bool)
            found = set(matches[kept & (matches > 0)].tolist())
            true_positives = int((kept & (matches > 0) & ~ignored).sum())
            if true_positives:
                by_image[image_id]["tp"][k] = true_positives
            by_image[image_id]["fp"] += [evaluation.cocoDt.anns[d]
                                         for d in np.asarray(record["dtIds"])[kept & (matches == 0) & ~ignored]]
            by_image[image_id]["missed"] += [evaluation.cocoGt.anns[g] for g, ignore in
                                             zip(record["gtIds"], record["gtIgnore"]) if not ignore and g not in found]
    return [ImageErrors(int(image_id), found["tp"], _classify_errors(found["fp"], found["missed"], class_of))
            for image_id, found in by_image.items()]


def _classify_errors(false_positives: List[Dict], missed: List[Dict], class_of: Dict[int, int]) -> List[Dict]:
    """An image's unmatched detections (COCO results) and boxes (COCO annotations) as errors: a
    detection overlapping an unmatched box of another class (IoU >= MATCH_IOU, highest IoU, each box
    once, highest score first) confuses it; the others are background; the boxes left are missed."""
    false_positives = sorted(false_positives, key=lambda d: -d["score"])
    iou = _box_iou([d["bbox"] for d in false_positives], [g["bbox"] for g in missed])
    errors, confused = [], set()
    for d, row in zip(false_positives, iou):
        candidates = [j for j in np.argsort(-row, kind="stable")
                      if row[j] >= MATCH_IOU and j not in confused and missed[j]["category_id"] != d["category_id"]]
        if candidates:
            confused.add(candidates[0])
        errors.append({"kind": "confused" if candidates else "background",
                       "gt_class": class_of[missed[candidates[0]]["category_id"]] if candidates else None,
                       "pred_class": class_of[d["category_id"]], "box": d["bbox"], "score": d["score"]})
    errors += [{"kind": "missed", "gt_class": class_of[g["category_id"]], "pred_class": None, "box": g["bbox"],
                "score": None} for j, g in enumerate(missed) if j not in confused]
    return errors


def confusion_matrix(images: List[ImageErrors], num_classes: int) -> np.ndarray:
    """(K + 1, K + 1) counts, rows ground truth, columns prediction, index K background."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image in images:
        for k, count in image.true_positives.items():
            matrix[k, k] += count
        for error in image.errors:
            row = num_classes if error["gt_class"] is None else error["gt_class"]
            column = num_classes if error["pred_class"] is None else error["pred_class"]
            matrix[row, column] += 1
    return matrix


def precision_recall_f1(matrix: np.ndarray) -> List[Dict]:
    """Per class, from the confusion matrix: precision = TP / detections, recall = TP / boxes, F1
    (None where undefined)."""
    rows = []
    for k in range(matrix.shape[0] - 1):
        tp, detections, boxes = int(matrix[k, k]), int(matrix[:, k].sum()), int(matrix[k, :].sum())
        precision = tp / detections if detections else None
        recall = tp / boxes if boxes else None
        f1 = 2 * tp / (detections + boxes) if detections + boxes else None
        rows.append({"true_positives": tp, "detections": detections, "boxes": boxes,
                     "precision": precision, "recall": recall, "F1": f1})
    return rows
