"""Running a model on image files: detections drawn on each image and a COCO results list.

``Predictor`` is detectron2's DefaultPredictor (images read as BGR, converted to INPUT.FORMAT, resized
as at test time, detections in the original pixels) with MODEL.WEIGHTS loaded by RetinaNetCheckpointer.
"""
import json
import logging
import os
from typing import Dict, Iterable, List, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

import detectron2.data.transforms as T
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .amp import amp_dtype, device_type, inference_autocast, warn_if_emulated
from .atomic import atomic_open, atomic_path
from .checkpoint import load_model_weights
from .config import retinanet_node
from .visualize import draw_detections

logger = logging.getLogger(__name__)

# File endings read from a folder (files named explicitly are read whatever their ending).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Files written next to the drawn images.
RESULTS_FILE = "coco_results.json"
IMAGE_IDS_FILE = "image_ids.json"


def list_images(inputs: Iterable[str]) -> List[str]:
    """Image files among ``inputs``: files as given, folders expanded to their images (sorted).

    Raises FileNotFoundError naming an input that does not exist.
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
            paths.extend(os.path.join(item, n) for n in names)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    return paths


def image_ids(paths: List[str]) -> List[int]:
    """COCO image id of each path: the file names' numbers when all are numbers (COCO's own
    files, 000000000139.jpg -> 139), else 1..N in order."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if stems and all(s.isdigit() for s in stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


class Predictor(DefaultPredictor):
    """detectron2's DefaultPredictor (its attributes, its call: an (H, W, 3) uint8 BGR image ->
    {"instances": detections in the image's pixels}) that loads MODEL.WEIGHTS with
    RetinaNetCheckpointer (every format it reads) and infers under MODEL.FOCAL_RETINANET.TEST_AMP.

    ValueError without MODEL.WEIGHTS, or with weights that leave layers of the model uninitialised
    (other than the class-dependent predictor), unless ``allow_random_weights``."""

    def __init__(self, cfg, allow_random_weights: bool = False):
        # DefaultPredictor.__init__ would load with DetectionCheckpointer: the same attributes, built here.
        if not cfg.MODEL.WEIGHTS and not allow_random_weights:
            raise ValueError(
                "MODEL.WEIGHTS is empty: the model would be untrained. Pass MODEL.WEIGHTS /path/model.pth "
                "(or --allow-random-weights to use an untrained model on purpose)"
            )
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR' for a predictor, got {cfg.INPUT.FORMAT!r}")
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.DATASETS.TEST:
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        load_model_weights(self.model, cfg.MODEL.WEIGHTS, require_complete=not allow_random_weights)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if retinanet_node(cfg).TEST_AMP:
            warn_if_emulated(device_type(cfg), amp_dtype(cfg))

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        with inference_autocast(self.cfg):
            return super().__call__(original_image)

    def preprocess(self, image_bgr: np.ndarray) -> torch.Tensor:
        """(H, W, 3) BGR image -> (3, H', W') float tensor in INPUT.FORMAT, resized as at test time
        (the model's input, as __call__ builds it)."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        resized = self.aug.get_transform(image).apply_image(image)
        return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))


def dataset_category_ids(cfg) -> Dict[int, int]:
    """Contiguous class -> dataset category id, from the metadata of cfg.DATASETS.TEST[0]: COCO's
    builtin splits have it; datasets registered from a JSON have it only once loaded, so empty
    (class indices are written) until then."""
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
    return {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}


def class_names(cfg) -> List[str]:
    """Names to draw: the test dataset's thing_classes, else the class numbers."""
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    names = getattr(metadata, "thing_classes", None)
    return list(names) if names else [str(i) for i in range(cfg.MODEL.RETINANET.NUM_CLASSES)]


def output_name(path: str) -> str:
    """Drawn image's file name: the input's, as PNG unless it is a JPEG."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return stem + (ext if ext.lower() in (".jpg", ".jpeg", ".png") else ".png")


def predict_files(
    predictor: Predictor, paths: List[str], output_dir: str, draw_threshold: float = 0.5
) -> Tuple[List[dict], List[Tuple[str, str]]]:
    """Detect on every path, writing into ``output_dir`` the drawn images (detections scoring at
    least ``draw_threshold``), RESULTS_FILE (all detections) and IMAGE_IDS_FILE (id -> path).

    Returns:
        results: COCO results (image_id, category_id, bbox XYWH, score), all detections.
        skipped: (path, reason) of each file that could not be read as an image.
    """
    names = [output_name(p) for p in paths]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"several inputs would be drawn to the same file name: {clashes}")
    inputs = {os.path.realpath(p) for p in paths}
    written = [os.path.join(output_dir, n) for n in names + [RESULTS_FILE, IMAGE_IDS_FILE]]
    overwritten = sorted(p for p in written if os.path.realpath(p) in inputs)
    if overwritten:
        raise ValueError(
            f"--output {output_dir} would overwrite {len(overwritten)} of the input files "
            f"(e.g. {overwritten[0]}); nothing was written. Choose another output folder"
        )
    os.makedirs(output_dir, exist_ok=True)
    categories = dataset_category_ids(predictor.cfg)
    labels = class_names(predictor.cfg)
    ids = image_ids(paths)
    results, skipped = [], []
    for path, image_id, name in tqdm(list(zip(paths, ids, names)), desc="images", disable=len(paths) < 2):
        try:
            image = read_image(path, format="BGR")
        except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, ... on bad files
            logger.warning(f"skipped {path}: cannot be read as an image ({type(error).__name__}: {error})")
            skipped.append((path, f"{type(error).__name__}: {error}"))
            continue
        instances = predictor(image)["instances"].to("cpu")
        for result in instances_to_coco_json(instances, image_id):
            result["category_id"] = categories.get(result["category_id"], result["category_id"])
            results.append(result)
        drawn = draw_detections(image, instances, labels, draw_threshold)
        with atomic_path(os.path.join(output_dir, name)) as tmp:
            if not cv2.imwrite(tmp, drawn[:, :, ::-1]):
                raise OSError(f"could not write {os.path.join(output_dir, name)}")
    with atomic_open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f)
    unreadable = {path for path, _ in skipped}
    with atomic_open(os.path.join(output_dir, IMAGE_IDS_FILE), "w") as f:
        json.dump({str(i): p for i, p in zip(ids, paths) if p not in unreadable}, f, indent=1)
    return results, skipped
