"""Registers the embedded shapes dataset into detectron2's DatasetCatalog / MetadataCatalog, and
checks that a COCO-format dataset's files exist before a loader is built."""
import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import CLASSES, SPLITS, ShapesSplit, default_root, generate_split, split_paths


def _load_shapes(root: str, split: ShapesSplit, dataset_name: str):
    json_file, image_dir = split_paths(root, split)
    generate_split(root, split)
    return load_coco_json(json_file, image_dir, dataset_name)


def register_shapes(root: str) -> None:
    """Register every split of SPLITS, generated lazily (on first use) and cached under ``root``."""
    for dataset_name, split in SPLITS.items():
        json_file, image_dir = split_paths(root, split)
        DatasetCatalog.register(dataset_name, functools.partial(_load_shapes, root, split, dataset_name))
        MetadataCatalog.get(dataset_name).set(
            thing_classes=list(CLASSES), json_file=json_file, image_root=image_dir, evaluator_type="coco"
        )


def check_dataset_files(dataset_name: str) -> None:
    """Raise FileNotFoundError naming the expected files when a COCO-format dataset is missing.

    Datasets generated on demand (the shapes splits) and datasets without a json_file are skipped.
    """
    if dataset_name in SPLITS:
        return
    metadata = MetadataCatalog.get(dataset_name)
    json_file = getattr(metadata, "json_file", None)
    image_root = getattr(metadata, "image_root", None)
    if json_file is None or image_root is None:
        return
    missing = [p for p in (json_file, image_root) if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"dataset '{dataset_name}' expects its annotations at {json_file} and its images in "
            f"{image_root}; missing: {', '.join(missing)}. detectron2 reads COCO from "
            f"$DETECTRON2_DATASETS/coco (now DETECTRON2_DATASETS="
            f"{os.getenv('DETECTRON2_DATASETS', 'datasets (unset)')}): "
            "coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/*.jpg"
        )


register_shapes(default_root())
