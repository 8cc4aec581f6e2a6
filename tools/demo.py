#!/usr/bin/env python
"""The demo: train FocalRetinaNet from scratch on the embedded shapes dataset on CPU with train_net.py
(detectron2's step trainer and hooks), evaluate the held-out split with COCOEvaluator, and draw
detections into a PNG.

    python tools/demo.py [--config-file configs/shapes_demo.yaml] [--images 8] [--amp auto|on|off] [--start-over] [KEY VALUE ...]

--amp auto (the default) trains and evaluates under bfloat16 autocast on CPUs with bfloat16 units
(amx_bf16 / avx512_bf16 in /proc/cpuinfo), where it is faster at the same AP, and in float32 elsewhere.
"""
import argparse
import os
import sys

import cv2
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_net  # noqa: E402  (the repository's train_net.py)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

import retinanet_d2  # noqa: E402
from retinanet_d2.amp import cpu_has_units_for  # noqa: E402
from retinanet_d2.atomic import atomic_path  # noqa: E402
from retinanet_d2.predict import Predictor  # noqa: E402
from retinanet_d2.visualize import draw_detections, tile  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs", "shapes_demo.yaml"))
    parser.add_argument("--images", type=int, default=8, help="held-out images to draw")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                        help="mixed precision (bfloat16 on CPU); auto: on where the CPU has bfloat16 units")
    parser.add_argument("--start-over", action="store_true",
                        help="train anew over an earlier demo run (moved into OUTPUT_DIR/replaced_<time>/)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()

    amp = args.amp == "on" or (args.amp == "auto" and cpu_has_units_for(torch.bfloat16))
    amp_opts = ["SOLVER.AMP.ENABLED", str(amp), "MODEL.FOCAL_RETINANET.TEST_AMP", str(amp)]
    print(f"[demo] mixed precision (bfloat16): {'on' if amp else 'off'} (--amp {args.amp})")
    start_over = ["--start-over"] if args.start_over else []
    train_args = train_net.argument_parser().parse_args(
        ["--config-file", args.config_file, *start_over, *amp_opts, *args.opts]
    )
    train_net.main(train_args)  # trains, then evaluates the test split (COCOEvaluator)

    cfg = retinanet_d2.load_config(args.config_file, [*amp_opts, *args.opts])
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    predictor = Predictor(cfg)  # resizes as the evaluation does (INPUT.MIN_SIZE_TEST)
    dataset = cfg.DATASETS.TEST[0]
    class_names = MetadataCatalog.get(dataset).thing_classes
    drawn = []
    for record in DatasetCatalog.get(dataset)[: args.images]:
        image = cv2.imread(record["file_name"])
        instances = predictor(image)["instances"]
        drawn.append(draw_detections(image, instances, class_names))
    output = os.path.join(cfg.OUTPUT_DIR, "detections.png")
    with atomic_path(output) as tmp:
        cv2.imwrite(tmp, tile(drawn, columns=4)[:, :, ::-1])
    print(f"[demo] detections on {len(drawn)} held-out images: {output}")


if __name__ == "__main__":
    main()
