"""Running a model on image files: detections drawn on each image and a COCO results list.

``Predictor`` is detectron2's DefaultPredictor (images read as BGR, converted to the model's format,
resized as at test time, detections in the original pixels) for either kind of config, with the
weights loaded by RetinaNetCheckpointer.
"""
import json
import logging
import os
from typing import Dict, Iterable, List, Tuple

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances

from .amp import autocast_if, warn_if_emulated
from .atomic import atomic_open, atomic_path
from .checkpoint import load_model_weights
from .data.checks import pixel_depth_problem
from .engine.parts import run_parts
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


def require_writable_folder(folder: str, key: str) -> None:
    """Create ``folder`` if needed; PermissionError / NotADirectoryError naming ``key`` when it cannot
    be written into (checked before a model is loaded, not at the first file written)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{key} {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise type(error)(f"{key} {folder}: cannot create it ({error.strerror}); choose another folder") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{key} {folder}: this user cannot write into it; choose another folder")


def image_ids(paths: List[str]) -> List[int]:
    """COCO image id of each path: the file names' numbers when all are numbers and no two are the
    same number (COCO's own files, 000000000139.jpg -> 139), else 1..N in order (1.png and 001.png
    would share an id)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


class Predictor(DefaultPredictor):
    """detectron2's DefaultPredictor (its attributes, its call: an (H, W, 3) uint8 BGR image ->
    {"instances": detections in the image's pixels}) for a yacs config or a LazyConfig (the call is
    its own: detectron2's reads yacs keys), on tiles when sliced inference is on: the weights
    (MODEL.WEIGHTS / train.init_checkpoint) loaded with RetinaNetCheckpointer (every format it reads),
    images resized as at test time, inference under the test AMP setting.

    ValueError without weights, or with weights that leave layers of the model uninitialised (other
    than the class-dependent predictor), unless ``allow_random_weights``."""

    def __init__(self, cfg, allow_random_weights: bool = False):
        # DefaultPredictor.__init__ reads yacs keys and loads with DetectionCheckpointer: the same attributes, built here.
        self.cfg, self.parts = cfg, run_parts(cfg)
        settings = self.parts.settings
        if not settings.weights and not allow_random_weights:
            raise ValueError(
                f"{settings.weights_key} is empty: the model would be untrained. Set {settings.weights_key} to "
                "/path/model.pth (or pass --allow-random-weights to use an untrained model on purpose)"
            )
        if self.parts.input_format not in ("RGB", "BGR"):
            raise ValueError(f"the model's input format must be 'RGB' or 'BGR' for a predictor, got {self.parts.input_format!r}")
        self.parts.check_tiles()
        self.model = self.parts.build_model().eval()
        self.metadata = MetadataCatalog.get(settings.test_datasets[0]) if settings.test_datasets else None
        load_model_weights(self.model, settings.weights, key=settings.weights_key, require_complete=not allow_random_weights)
        self.runner = self.parts.inference_model(self.model)  # the model, or the model on tiles
        self.aug = self.parts.test_resize()
        self.input_format = self.parts.input_format
        if settings.test_amp:
            warn_if_emulated(settings.device, settings.amp_dtype)

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        """DefaultPredictor's call (which reads yacs keys): (H, W, 3) BGR -> {"instances": detections in
        the image's pixels}, under autocast with the test AMP setting."""
        settings = self.parts.settings
        height, width = original_image.shape[:2]
        with torch.no_grad(), autocast_if(settings.test_amp, settings.device, settings.amp_dtype):
            image = self.preprocess(original_image).to(next(self.model.parameters()).device)
            return self.runner([{"image": image, "height": height, "width": width}])[0]

    def preprocess(self, image_bgr: np.ndarray) -> torch.Tensor:
        """(H, W, 3) BGR image -> (3, H', W') float tensor in the model's format, resized as at test time
        (the model's input, as __call__ builds it)."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        resized = self.aug.get_transform(image).apply_image(image)
        return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))

    def dataset_category_ids(self) -> Dict[int, int]:
        """Contiguous class -> the test dataset's category id (empty without a test dataset: class
        indices are written). A dataset registered from a JSON knows its ids once loaded: it is
        loaded here if it was not yet."""
        if self.metadata is not None and self.metadata.get("thing_dataset_id_to_contiguous_id") is None \
                and self.metadata.name in DatasetCatalog.list():
            DatasetCatalog.get(self.metadata.name)
        mapping = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        return {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}

    def class_names(self) -> List[str]:
        """Names to draw: the test dataset's thing_classes, else the class numbers."""
        names = getattr(self.metadata, "thing_classes", None)
        return list(names) if names else [str(i) for i in range(self.parts.settings.num_classes)]


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
    categories = predictor.dataset_category_ids()
    labels = predictor.class_names()
    ids = image_ids(paths)
    results, skipped = [], []
    for path, image_id, name in tqdm(list(zip(paths, ids, names)), desc="images", disable=len(paths) < 2):
        try:
            with Image.open(path) as header:
                problem = pixel_depth_problem(header.mode)
            if problem:
                raise ValueError(problem)
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
