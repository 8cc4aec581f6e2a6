#!/usr/bin/env python
"""Where does my detector fail? Detections (a COCO results file, e.g. what --eval-only writes to
OUTPUT_DIR/inference/coco_instances_results.json) against a dataset's ground truth: per-class AP,
AP50, recall and AR; precision, recall and F1 at a score threshold; precision-recall curves; a
confusion matrix with background; the N images with the most errors drawn. Writes into --output:
errors.json, pr_curves.png, confusion_matrix.png and worst/ (retinanet_d2/analysis/error_report.py).
train_net.py writes the same after every evaluation (OUTPUT_DIR/inference/errors_<dataset>/).

    python tools/analyze_errors.py --results output/demo/inference/coco_instances_results.json \\
        --dataset-name shapes_val --output output/demo/errors
    python tools/analyze_errors.py --results results.json --dataset mine_val val.json images/ --output errors/
"""
import argparse
import json
import os
import sys

import retinanet_d2  # noqa: F401  (registers the demo's datasets)
from retinanet_d2.analysis.error_report import analyze_dataset_errors
from retinanet_d2.config import retinanet_node, DEFAULTS
from retinanet_d2.data import register_coco_dataset

_NODE = retinanet_node(DEFAULTS)


def read_results(path: str):
    """The COCO results list in ``path``; an error naming the file if it is not one."""
    if not os.path.isfile(path):
        raise SystemExit(f"--results {path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--results {path}: not JSON ({error})")
    if not isinstance(results, list) or any(not {"image_id", "category_id", "bbox", "score"} <= set(r) for r in results):
        raise SystemExit(f"--results {path}: not a COCO results list (image_id, category_id, bbox, score per entry)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--results", required=True, help="COCO results JSON")
    parser.add_argument("--dataset", nargs=3, metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="the ground truth: a COCO-format dataset, registered as NAME")
    parser.add_argument("--dataset-name", help="the ground truth: a registered dataset")
    parser.add_argument("--output", required=True, help="folder for the analysis (created)")
    parser.add_argument("--score-thresh", type=float, default=_NODE.ERROR_ANALYSIS_SCORE_THRESH)
    parser.add_argument("--worst", type=int, default=_NODE.ERROR_ANALYSIS_WORST_IMAGES, help="images drawn")
    parser.add_argument("--max-dets", type=int, default=DEFAULTS.TEST.DETECTIONS_PER_IMAGE,
                        help="detections per image scored (the model's TEST.DETECTIONS_PER_IMAGE)")
    args = parser.parse_args(argv)
    if bool(args.dataset) == bool(args.dataset_name):
        parser.error("give the ground truth as --dataset NAME JSON IMAGE_DIR or as --dataset-name NAME")
    results = read_results(args.results)
    if args.dataset:
        register_coco_dataset(*args.dataset, check_files=False)  # only the worst images are read
    name = args.dataset[0] if args.dataset else args.dataset_name
    os.makedirs(args.output, exist_ok=True)
    report = analyze_dataset_errors(name, results, args.output, score_thresh=args.score_thresh, worst=args.worst,
                                    max_dets=args.max_dets)
    print(f"[errors] {name}: {len(results)} detections; at score >= {args.score_thresh}, IoU 0.5:")
    print("| class | AP | AP50 | recall50 | precision | recall | F1 |\n|---|---|---|---|---|---|---|")
    for row in report["per_class"]:
        cells = [row[k] for k in ("AP", "AP50", "recall50")] + [None if row[k] is None else 100 * row[k]
                                                               for k in ("precision", "recall", "F1")]
        print(f"| {row['class']} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    print(f"[errors] report, figures and the {len(report['worst_images'])} worst images in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
