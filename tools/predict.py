#!/usr/bin/env python
"""Detect objects in images with a FocalRetinaNet config and weights (any format MODEL.WEIGHTS
accepts), drawing the detections on each image and writing a COCO results JSON.

    python tools/predict.py --config-file configs/torchvision/retinanet_resnet50_fpn.yaml \\
        --input photos/ street.jpg --output predictions/ [MODEL.WEIGHTS file.pth MODEL.DEVICE cpu]

Writes OUTPUT/<image name> (detections scoring >= --draw-threshold), OUTPUT/coco_results.json
(every detection; image ids are COCO's when the file names are numbers) and OUTPUT/image_ids.json.
Files that cannot be read as images are reported by name and skipped; the exit status is then 1.
"""
import argparse
import sys

from detectron2.utils.logger import setup_logger

import retinanet_d2
from retinanet_d2.data.checks import allow_image_pixels
from retinanet_d2.predict import Predictor, list_images, predict_files, require_writable_folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--output", required=True, help="folder for drawn images and JSON")
    parser.add_argument("--draw-threshold", type=float, default=0.5, help="lowest score drawn")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="run without MODEL.WEIGHTS, or with weights that leave layers uninitialised")
    parser.add_argument("--max-image-pixels", type=int, default=0, metavar="N",
                        help="read images of up to N pixels (Pillow refuses more than ~179 million by default)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="retinanet_d2")
    if args.max_image_pixels:
        allow_image_pixels(args.max_image_pixels)
    require_writable_folder(args.output, "--output")  # before the model loads
    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    cfg.freeze()

    paths = list_images(args.input)
    results, skipped = predict_files(Predictor(cfg, allow_random_weights=args.allow_random_weights), paths, args.output, args.draw_threshold)
    print(f"[predict] {len(paths) - len(skipped)} images, {len(results)} detections -> {args.output}")
    for path, reason in skipped:
        print(f"[predict] skipped {path}: {reason}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
