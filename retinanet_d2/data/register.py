"""Registers the embedded shapes dataset and users' COCO-format datasets (``train_net.py --dataset``)
into detectron2's DatasetCatalog / MetadataCatalog, and checks that a COCO-format dataset's files
exist before a loader is built."""
import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.utils import comm

from .checks import DatasetError, allow_image_pixels, check_coco_dataset

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


def register_coco_dataset(name: str, json_file: str, image_root: str, check_files: bool = True) -> None:
    """Register a COCO-format dataset (instances json + image folder) as ``name``, checking its
    files and categories now (unless not ``check_files``: for uses that read no image, or only
    some); ValueError if ``name`` is taken by another dataset."""
    if name in DatasetCatalog.list():
        metadata = MetadataCatalog.get(name)
        if (metadata.get("json_file"), metadata.get("image_root")) == (json_file, image_root):
            return  # the same files again (e.g. a second call in the same process)
        raise ValueError(
            f"--dataset {name}: that name is already registered (json_file="
            f"{metadata.get('json_file')}); choose another name"
        )
    register_coco_instances(name, {}, json_file, image_root)
    if check_files:
        check_dataset_files(name)


def check_dataset_files(dataset_name: str) -> None:
    """Raise FileNotFoundError naming the expected files when a COCO-format dataset is missing, and
    checks.DatasetError listing every problem of its JSON and images (checks.check_coco_dataset: once
    per process and file version, by the main process, the verdict shared with the others).

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
    key = (json_file, image_root, os.path.getmtime(json_file))
    if key in _CHECKED:
        return
    error = None
    if comm.is_main_process():
        try:
            check_coco_dataset(json_file, image_root)
        except DatasetError as problem:
            error = str(problem)
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if error:
        raise DatasetError(f"dataset '{dataset_name}': {error}")
    _CHECKED.add(key)


_CHECKED = set()  # (json_file, image_root, modification time) of the datasets checked in this process


def check_num_classes(dataset_name: str, num_classes: int, key: str = "MODEL.RETINANET.NUM_CLASSES") -> None:
    """Raise ValueError naming ``key`` when ``num_classes`` differs from the dataset's classes
    (known once the dataset has been loaded)."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"{key}={num_classes}, but dataset '{dataset_name}' has "
            f"{len(classes)} classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
        )


def check_same_classes(dataset_name: str, reference_names) -> None:
    """Raise ValueError, showing both class lists, when ``dataset_name``'s classes (thing_classes,
    by contiguous class index) differ from those of a dataset of ``reference_names`` (the training
    sets): the same model output would mean another class in each, and every AP would be scored
    against the wrong class. Datasets whose classes are not known yet (not loaded) are not compared."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    for reference in reference_names:
        expected = MetadataCatalog.get(reference).get("thing_classes")
        if classes is None or expected is None or list(classes) == list(expected):
            continue
        how = "in another order (its JSON gives them other category ids)" if sorted(classes) == sorted(expected) \
            else "differently"
        raise ValueError(
            f"dataset '{dataset_name}' names its classes {how} than '{reference}': class index -> name is "
            f"{dict(enumerate(classes))} there and {dict(enumerate(expected))} in '{reference}'. Give both JSONs the same "
            "categories (same ids and names)"
        )


register_shapes(default_root())


def add_dataset_arguments(parser, what: str) -> None:
    """The tools' dataset arguments: --dataset NAME JSON IMAGE_DIR (repeatable) and --max-image-pixels,
    as train_net.py's, and --dataset-name, the dataset ``what`` is done to."""
    parser.add_argument("--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset first (as train_net.py --dataset)")
    parser.add_argument("--max-image-pixels", type=int, default=0, metavar="N",
                        help="read images of up to N pixels (Pillow refuses more than ~179 million by default)")
    parser.add_argument("--dataset-name", help=f"the dataset {what} (default: the config's DATASETS.TRAIN[0])")


def chosen_dataset(args, cfg) -> str:
    """Register the datasets of ``args.dataset`` (checked, images up to ``args.max_image_pixels``); the
    name of ``args.dataset_name`` or the config's first training dataset."""
    if args.max_image_pixels:
        allow_image_pixels(args.max_image_pixels)
    for name, json_file, image_root in args.dataset:
        register_coco_dataset(name, json_file, image_root)
    return args.dataset_name or cfg.DATASETS.TRAIN[0]
