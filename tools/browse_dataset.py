#!/usr/bin/env python
"""What does the model see? The ground truth of a dataset drawn on its images, as loaded (--source
annotation) or after the config's training augmentation (--source dataloader: the resize and flips
of INPUT.*, as train_net.py's loader applies them), one PNG per image in --output (a new folder, or
one of its own earlier outputs; an input image is never overwritten).

    python tools/browse_dataset.py --config-file configs/shapes_demo.yaml --source dataloader \\
        --num 8 --output output/browse
    python tools/browse_dataset.py --config-file configs/retinanet_R50_FPN_1x.yaml \\
        --dataset mine_train train.json images/ --dataset-name mine_train --output output/browse
"""
import argparse
import os
import sys

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer

import retinanet_d2
from retinanet_d2.atomic import atomic_path
from retinanet_d2.data.register import add_dataset_arguments, chosen_dataset
from retinanet_d2.data.mapper import FileNamingDatasetMapper
from retinanet_d2.visualize import class_colors


def annotated(record, class_names):
    """(H, W, 3) RGB: the image of ``record`` as stored, its boxes drawn (XYXY absolute)."""
    image = read_image(record["file_name"], format="RGB")
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record.get("annotations", [])]
    classes = [a["category_id"] for a in record.get("annotations", [])]
    return draw(image, np.asarray(boxes).reshape(-1, 4), classes, class_names)


def augmented(record, mapper, class_names):
    """(H, W, 3) RGB: the image as the training loader gives it to the model, with its boxes."""
    x = mapper(record)
    image = x["image"].permute(1, 2, 0).numpy().astype(np.uint8)
    if mapper.image_format == "BGR":
        image = image[:, :, ::-1]
    instances = x["instances"]
    return draw(image, instances.gt_boxes.tensor.numpy(), instances.gt_classes.tolist(), class_names)


def draw(image_rgb, boxes, classes, class_names):
    visualizer = Visualizer(image_rgb, metadata=None)
    return visualizer.overlay_instances(boxes=boxes, labels=[class_names[c] for c in classes],
                                        assigned_colors=class_colors(classes)).get_image()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", required=True)
    add_dataset_arguments(parser, "to draw")
    parser.add_argument("--source", choices=("annotation", "dataloader"), default="annotation")
    parser.add_argument("--num", type=int, default=16, help="the first N images (0: all)")
    parser.add_argument("--output", required=True, help="folder for the drawings")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = retinanet_d2.load_config(args.config_file, args.opts)
    name = chosen_dataset(args, cfg)
    records = DatasetCatalog.get(name)
    records = records[: args.num] if args.num > 0 else records
    class_names = MetadataCatalog.get(name).thing_classes
    outputs = [os.path.join(args.output, f"{i:04d}_{os.path.splitext(os.path.basename(r['file_name']))[0]}.png")
               for i, r in enumerate(records)]
    inputs = {os.path.realpath(r["file_name"]) for r in records}
    if any(os.path.realpath(path) in inputs for path in outputs):
        parser.error(f"--output {args.output} would overwrite input images; choose another folder")
    os.makedirs(args.output, exist_ok=True)
    mapper = FileNamingDatasetMapper(cfg, is_train=True) if args.source == "dataloader" else None
    for record, path in zip(records, outputs):
        drawn = augmented(record, mapper, class_names) if mapper else annotated(record, class_names)
        with atomic_path(path) as tmp:
            if not cv2.imwrite(tmp, drawn[:, :, ::-1]):
                raise OSError(f"could not write {path}")
    print(f"[browse] {len(records)} images of {name} ({args.source}) drawn in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
