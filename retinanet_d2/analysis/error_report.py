"""The error analysis of errors.py as files a user reads and looks at, in one folder:

* ``errors.json``: per-class AP / AP50 / recall / AR, precision / recall / F1 at the score
  threshold, the confusion matrix with background, and the worst images with their errors;
* ``pr_curves.png``: precision against recall at IoU 0.5, one curve per class;
* ``confusion_matrix.png``;
* ``worst/NN_<image>.png``: the images with the most errors (missed + false detections at the
  threshold), ground truth in white, detections above the threshold in their class's colour (an
  image that cannot be read is listed with its "draw_error" and a warning instead).
"""
import contextlib
import io
import json
import logging
import os
import re
from typing import Dict, List, Sequence

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json

from ..atomic import atomic_open, atomic_path
from ..visualize import class_colors
from .errors import (
    ImageErrors, confusion_matrix, image_errors, per_class_metrics, precision_recall_curves, precision_recall_f1,
    run_cocoeval,
)
from .figures import new_figure, save_figure

logger = logging.getLogger(__name__)
REPORT_FILE, PR_FIGURE, CONFUSION_FIGURE, WORST_FOLDER = "errors.json", "pr_curves.png", "confusion_matrix.png", "worst"
DRAWING = re.compile(r"\d{2,}_.+\.png")  # the names of the worst images' drawings: rank, then the image's name


def analyze_dataset_errors(dataset_name: str, results: List[Dict], output_dir: str, **options) -> Dict:
    """``analyze_errors`` against a registered dataset (its COCO json, written into ``output_dir`` as
    COCOEvaluator does when the dataset has none; its images for the drawings)."""
    json_file = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
    if not json_file:
        json_file = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
        convert_to_coco_json(dataset_name, json_file)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress prints
        coco_gt = COCO(json_file)
    class_names = [c["name"] for c in coco_gt.loadCats(sorted(coco_gt.getCatIds()))]
    image_files = {d["image_id"]: d["file_name"] for d in DatasetCatalog.get(dataset_name)}
    return analyze_errors(coco_gt, results, class_names, image_files, output_dir, **options)


def analyze_errors(coco_gt: COCO, results: List[Dict], class_names: Sequence[str], image_files: Dict[int, str],
                   output_dir: str, score_thresh: float = 0.5, worst: int = 20, max_dets: int = 100) -> Dict:
    """Write the analysis of ``results`` (COCO results) against ``coco_gt`` into ``output_dir``.

    Args:
        class_names: one per category of ``coco_gt``, in its category id order.
        image_files: image id -> file, to draw the worst images (ids missing here are not drawn).
        score_thresh: detections counted in the threshold metrics, the matrix and the drawings.
        worst: images drawn (0: none).
        max_dets: COCOeval's largest maxDets (TEST.DETECTIONS_PER_IMAGE).
    Returns: the report written to errors.json.
    """
    evaluation = run_cocoeval(coco_gt, results, max_dets)
    images = image_errors(evaluation, score_thresh)
    matrix = confusion_matrix(images, len(class_names))
    per_class = [{**row, **at_threshold} for row, at_threshold in
                 zip(per_class_metrics(evaluation, list(class_names)), precision_recall_f1(matrix))]
    ranked = sorted(images, key=lambda image: (-len(image.errors), image.image_id))[:worst]
    ranked = [image for image in ranked if image.errors]
    _clear_earlier_drawings(os.path.join(output_dir, WORST_FOLDER))
    worst_rows = [_draw_worst(rank, image, evaluation, class_names, image_files, output_dir, score_thresh)
                  for rank, image in enumerate(ranked, start=1)]
    report = {"score_thresh": score_thresh, "match_iou": 0.5, "classes": list(class_names), "per_class": per_class,
              "confusion_matrix": {"rows": "ground truth (classes, then background)",
                                   "columns": "prediction (classes, then background)", "counts": matrix.tolist()},
              "worst_images": worst_rows}
    with atomic_open(os.path.join(output_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=1)
    _plot_pr_curves(precision_recall_curves(evaluation), class_names, os.path.join(output_dir, PR_FIGURE))
    _plot_confusion(matrix, class_names, os.path.join(output_dir, CONFUSION_FIGURE))
    return report


def _clear_earlier_drawings(folder: str) -> None:
    """Create ``folder``, or remove the drawings an earlier analysis left in it (NN_<image>.png), so
    that it holds only this analysis's worst images; other files are left."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if DRAWING.fullmatch(name):
            os.remove(os.path.join(folder, name))


def _draw_worst(rank: int, image: ImageErrors, evaluation: COCOeval, class_names: Sequence[str],
                image_files: Dict[int, str], output_dir: str, score_thresh: float) -> Dict:
    """Draw one image of the worst list (when its file is known), its boxes and detections from the
    evaluation's per-image indices; its row of the report."""
    row = {"rank": rank, "image_id": image.image_id, "file_name": image_files.get(image.image_id),
           "true_positives": sum(image.true_positives.values()), "errors": image.errors}
    if row["file_name"] is None:
        return row
    picture = cv2.imread(row["file_name"], cv2.IMREAD_COLOR)
    if picture is None:  # the analysis goes on without this drawing; the report and the log say so
        row["draw_error"] = f"cannot read {row['file_name']} as an image"
        logger.warning(f"error analysis: image {image.image_id} not drawn: {row['draw_error']}")
        return row
    class_of = {c: k for k, c in enumerate(evaluation.params.catIds)}
    coco_gt = evaluation.cocoGt
    for annotation in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image.image_id], iscrowd=False)):
        _box(picture, annotation["bbox"], (255, 255, 255), f"GT {class_names[class_of[annotation['category_id']]]}", 2)
    for result in evaluation.cocoDt.imgToAnns[image.image_id]:
        if result["score"] >= score_thresh:
            k = class_of[result["category_id"]]
            colour = tuple(int(255 * c) for c in class_colors([k])[0][::-1])  # BGR
            _box(picture, result["bbox"], colour, f"{class_names[k]} {result['score']:.2f}", 1)
    stem = os.path.splitext(os.path.basename(row["file_name"]))[0]
    row["drawn"] = os.path.join(WORST_FOLDER, f"{rank:02d}_{stem}.png")
    with atomic_path(os.path.join(output_dir, row["drawn"])) as tmp:
        if not cv2.imwrite(tmp, picture):
            raise OSError(f"could not write {os.path.join(output_dir, row['drawn'])}")
    return row


def _box(picture: np.ndarray, box: Sequence[float], colour, text: str, thickness: int) -> None:
    x, y, w, h = (int(round(v)) for v in box)
    cv2.rectangle(picture, (x, y), (x + w, y + h), colour, thickness)
    cv2.putText(picture, text, (x, max(y - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)


def _plot_pr_curves(curves: Dict[str, np.ndarray], class_names: Sequence[str], path: str) -> None:
    figure, axis = new_figure(figsize=(6, 5))
    for k, precision in enumerate(curves["precision"]):
        if (precision > -1).any():
            axis.plot(curves["recall"], np.clip(precision, 0, None), label=class_names[k],
                      color=class_colors([k])[0])
    axis.set(xlabel="recall", ylabel="precision (interpolated)", xlim=(0, 1), ylim=(0, 1.02),
             title="precision-recall at IoU 0.5 (COCOeval)")
    axis.legend(fontsize=7)
    save_figure(figure, path, dpi=110)


def _plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str) -> None:
    labels = [*class_names, "background"]
    figure, axis = new_figure(figsize=(1.2 + 0.55 * len(labels), 1 + 0.5 * len(labels)))
    axis.imshow(np.log1p(matrix), cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axis.annotate(str(count), (column, row), ha="center", va="center", fontsize=7)
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.set(xlabel="prediction", ylabel="ground truth", title="confusion at IoU 0.5")
    save_figure(figure, path, dpi=110)
