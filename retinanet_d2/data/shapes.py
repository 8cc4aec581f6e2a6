"""The embedded demo dataset: generated images of shapes, written once as COCO JSON + PNG files.

Three classes that differ by shape only (colours are random per object): circle, square, triangle.
Each image has 1–8 objects with sizes log-uniform from 10 px to 70% of the image side, on a random
background with a noise texture and random lines (clutter, so that negatives dominate). Generation is
deterministic in (split, seed, image count, image size) and cached: a second call reuses the files.
"""
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np

from ..atomic import atomic_open

CLASSES = ("circle", "square", "triangle")
GENERATOR_VERSION = 2  # bump when the drawing changes, so caches are regenerated


@dataclass(frozen=True)
class ShapesSplit:
    """What one split of the dataset is generated from."""

    name: str
    num_images: int
    image_size: int
    seed: int
    min_object: float = 10.0
    max_object_fraction: float = 0.7
    max_objects: int = 8


def _random_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a random colour, smooth noise texture and 3–12 random lines."""
    base = np.array(_random_colour(rng), dtype=np.float32)
    coarse = rng.normal(0, 25, size=(size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 8, size=(size, size, 3)).astype(np.float32)
    image = np.clip(base + texture + grain, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 13))):
        p1 = tuple(int(v) for v in rng.integers(0, size, size=2))
        p2 = tuple(int(v) for v in rng.integers(0, size, size=2))
        cv2.line(image, p1, p2, _random_colour(rng), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def _box_iou(a: List[float], b: List[float]) -> float:
    """IoU of two XYWH boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _draw(image: np.ndarray, category: int, x: float, y: float, side: float, colour) -> None:
    """Draw shape ``category`` filling the square box (x, y, side, side)."""
    shift = 4  # sub-pixel precision for cv2 drawing
    scale = 1 << shift
    if CLASSES[category] == "circle":
        centre = (int((x + side / 2) * scale), int((y + side / 2) * scale))
        cv2.circle(image, centre, int(side / 2 * scale), colour, -1, cv2.LINE_AA, shift)
        return
    if CLASSES[category] == "square":
        points = [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    else:
        points = [(x + side / 2, y), (x + side, y + side), (x, y + side)]
    polygon = np.array([[int(px * scale), int(py * scale)] for px, py in points], dtype=np.int32)
    cv2.fillPoly(image, [polygon], colour, cv2.LINE_AA, shift)


def render_image(rng: np.random.Generator, split: ShapesSplit):
    """One image (H, W, 3) BGR uint8 and its objects [(category, [x, y, w, h])]."""
    size = split.image_size
    image = _background(rng, size)
    objects: List[Tuple[int, List[float]]] = []
    wanted = int(rng.integers(1, split.max_objects + 1))
    log_lo, log_hi = math.log(split.min_object), math.log(split.max_object_fraction * size)
    for _ in range(wanted * 10):  # placement attempts
        if len(objects) == wanted:
            break
        side = math.exp(rng.uniform(log_lo, log_hi))
        x, y = rng.uniform(0, size - side, size=2)
        box = [float(x), float(y), side, side]
        if any(_box_iou(box, other) > 0.2 for _, other in objects):
            continue
        objects.append((int(rng.integers(len(CLASSES))), box))
    # Largest first, so that no object hides behind a larger one drawn later.
    objects.sort(key=lambda obj: -obj[1][2])
    for category, (x, y, side, _) in objects:
        _draw(image, category, x, y, side, _random_colour(rng))
    return image, objects


def split_paths(root: str, split: ShapesSplit) -> Tuple[str, str]:
    """(json file, image folder) of a split under ``root``."""
    return os.path.join(root, f"{split.name}.json"), os.path.join(root, split.name)


def generate_split(root: str, split: ShapesSplit) -> str:
    """Write the split's PNGs and COCO JSON under ``root`` unless an identical one is there;
    return the JSON path."""
    json_file, image_dir = split_paths(root, split)
    info = {"generator_version": GENERATOR_VERSION, **asdict(split)}
    if os.path.exists(json_file):
        with open(json_file, encoding="utf-8") as f:
            if json.load(f).get("info") == info:
                return json_file
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng(split.seed)
    images, annotations = [], []
    for image_id in range(1, split.num_images + 1):
        image, objects = render_image(rng, split)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image)
        images.append(
            {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
        )
        for category, box in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category + 1,
                    "bbox": [round(v, 2) for v in box],
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    with atomic_open(json_file, "w", encoding="utf-8") as f:  # written last: a JSON means a complete split
        json.dump(coco, f)
    return json_file


def default_root() -> str:
    """Where the dataset is cached: $DETECTRON2_DATASETS/retinanet_d2_shapes (detectron2's root)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "retinanet_d2_shapes")


# The registered splits: detectron2 dataset name -> how it is generated.
SPLITS: Dict[str, ShapesSplit] = {
    "shapes_train": ShapesSplit("train", num_images=2000, image_size=256, seed=1),
    "shapes_val": ShapesSplit("val", num_images=200, image_size=256, seed=2),
    # Small objects (10-48 px on 192 px images, up to 4 per image): the study's imbalanced variant.
    "shapes_small_train": ShapesSplit("small_train", num_images=2000, image_size=192, seed=5,
                                      max_object_fraction=0.25, max_objects=4),
    "shapes_small_val": ShapesSplit("small_val", num_images=200, image_size=192, seed=6,
                                    max_object_fraction=0.25, max_objects=4),
    # The same objects (10-48 px, up to 4) on canvases of twice the side: four times the background
    # (the imbalance sweep's natural check of its far-negative weight).
    "shapes_sparse_train": ShapesSplit("sparse_train", num_images=2000, image_size=384, seed=5,
                                       max_object_fraction=0.125, max_objects=4),
    "shapes_sparse_val": ShapesSplit("sparse_val", num_images=200, image_size=384, seed=6,
                                     max_object_fraction=0.125, max_objects=4),
    "shapes_tiny_train": ShapesSplit("tiny_train", num_images=8, image_size=128, seed=3),
    "shapes_tiny_val": ShapesSplit("tiny_val", num_images=4, image_size=128, seed=4),
}
