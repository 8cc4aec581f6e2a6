#!/usr/bin/env python
"""Do the anchors fit my boxes? A dataset against a config's anchors, before training: box sizes and
aspect ratios against each level's anchors, every box's best IoU (the share that cannot reach the
foreground threshold, by size), foreground anchors per box, the imbalance (non-ignored anchors per
foreground anchor, negatives per positive anchor-class pair, beside COCO's), and the paper-terms
anchor setting that fits best, as config lines. Writes OUTPUT/anchor_fit.json and anchor_fit.png.

    python tools/analyze_anchors.py --config-file configs/shapes_demo.yaml --output-dir output/anchors
    python tools/analyze_anchors.py --config-file configs/retinanet_R50_FPN_1x.yaml \\
        --dataset mine_train train.json images/ --dataset-name mine_train --output-dir output/anchors
"""
import argparse
import json
import os
import sys

from detectron2.data import DatasetCatalog

import retinanet_d2
from retinanet_d2.analysis.anchor_fit import AnchorGrid, measure, plot_fit, suggest_anchors, training_boxes
from retinanet_d2.atomic import atomic_open
from retinanet_d2.data.register import add_dataset_arguments, chosen_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    add_dataset_arguments(parser, "to measure")
    parser.add_argument("--max-images", type=int, default=1000, help="the first N images (0: all)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    name = chosen_dataset(args, cfg)
    records = DatasetCatalog.get(name)
    images = training_boxes(cfg, records[: args.max_images] if args.max_images > 0 else records)
    grid = AnchorGrid.from_config(cfg)
    report = measure(grid, images, cfg.MODEL.RETINANET.NUM_CLASSES)
    report["dataset"] = name
    report["suggestion"] = suggest_anchors(cfg, images, grid)
    os.makedirs(args.output_dir, exist_ok=True)
    with atomic_open(os.path.join(args.output_dir, "anchor_fit.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    plot_fit(report, os.path.join(args.output_dir, "anchor_fit.png"))
    print_report(report)
    return 0


def print_report(report) -> None:
    t = report["foreground_iou"]
    print(f"[anchors] {report['dataset']}: {report['images']} images, {report['boxes']} boxes (training scale)")
    print(f"  box size sqrt(w h) percentiles: {report['box_size_percentiles']}")
    print(f"  box aspect ratio h/w percentiles: {report['box_aspect_ratio_percentiles']}")
    print(f"  anchor sizes per level: {report['anchor_sizes_per_level']}")
    print(f"  best IoU percentiles: {report['best_iou_percentiles']}; "
          f"{report['share_below_threshold']:.1%} of the boxes below the foreground IoU {t}")
    for size_bin, row in report["below_threshold_by_size"].items():
        print(f"    size {size_bin} px: {row['boxes']} boxes, {row['below_threshold']:.1%} below {t}")
    print(f"  foreground anchors per box: {report['foreground_anchors_per_box_mean']:.2f} (mean)")
    print(f"  imbalance: {report['anchors_per_image']:.0f} anchors per image, {report['anchors_per_foreground']:.0f} "
          f"non-ignored anchors per foreground anchor, {report['negatives_per_positive_pair']:.0f} negatives per "
          f"positive anchor-class pair (COCO: ~{report['coco_for_comparison']['anchors_per_foreground']} and "
          f"~{report['coco_for_comparison']['negatives_per_positive_pair']})")
    s = report["suggestion"]
    print(f"  suggestion ({s['share_below_threshold']:.1%} below {t}, mean best IoU {s['mean_best_iou']:.3f}):")
    for line in s["config_lines"]:
        print("    " + line)


if __name__ == "__main__":
    sys.exit(main())
