"""Checking a COCO-format dataset before the first iteration, in one pass that a COCO-sized set can
afford: the JSON's records, and a header read of each image (not a decode; threads), so that a bad
file fails the run before training starts, named, instead of at the iteration that draws it.

Errors (``DatasetError``, all problems at once, each kind with its count and the first files or
annotation ids): duplicate image or annotation ids, annotations of unknown images or categories,
malformed boxes (not 4 finite numbers), images without width/height, missing or unreadable images,
images whose size differs from the JSON's (compared after the EXIF orientation, as detectron2 reads
them; a JSON in the stored orientation is told so), 16-bit, 32-bit and float images (detectron2 reads
them as blank 8-bit ones), images above Pillow's size limit (``--max-image-pixels`` raises it), the
same file listed twice, a dataset without annotations, JPEG/PNG files cut short (their end marker
missing and a decode failing).
Warnings: boxes that training drops (no area, or nothing left inside the image; a 'segmentation'
without a valid polygon, for which detectron2 drops the whole annotation), counted.
"""
import json
import logging
import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from PIL import Image

logger = logging.getLogger(__name__)

SHOWN = 5  # examples named per kind of problem
JPEG_END = b"\xff\xd9"
EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 swap width and height
EXIF_TRANSPOSING = (5, 6, 7, 8)
# PIL modes whose pixels detectron2's read_image (a conversion to 8-bit RGB) clips to a flat image.
HIGH_DEPTH_MODES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I;16N": "16-bit", "I": "32-bit integer",
                    "F": "32-bit float"}
PNG_END = b"IEND\xaeB`\x82"


class DatasetError(ValueError):
    """A dataset that would fail, or give wrong numbers, in training or evaluation; the message lists
    every problem found."""


def image_problem(path: str, width: Optional[int], height: Optional[int]) -> Optional[str]:
    """What is wrong with the image file ``path`` that the JSON says is ``width`` x ``height``
    (None: nothing). Reads the header; decodes only a JPEG or PNG whose end marker is missing. The
    size compared is the one detectron2 reads: after the EXIF orientation (a rotated phone photo)."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            stored, mode, kind = image.size, image.mode, image.format
            rotated = image.getexif().get(EXIF_ORIENTATION, 1) in EXIF_TRANSPOSING
            if not _ends_whole(path, kind):
                image.load()  # a file cut short fails here ("image file is truncated")
    except Image.DecompressionBombError as error:
        return f"{error}; if the file is yours, allow larger images with --max-image-pixels N"
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        return f"unreadable ({type(error).__name__}: {error})"
    if mode in HIGH_DEPTH_MODES:
        return pixel_depth_problem(mode)
    size = stored[::-1] if rotated else stored
    if width is not None and height is not None and size != (width, height):
        if rotated and stored == (width, height):
            return (f"is stored {stored[0]}x{stored[1]}, as the JSON says, but its EXIF orientation rotates it to "
                    f"{size[0]}x{size[1]}, the way detectron2 reads it; give the JSON the rotated size (and boxes "
                    "in the rotated picture) or save the pixels rotated without the EXIF tag")
        return f"is {size[0]}x{size[1]}, the JSON says {width}x{height}" + (" (after its EXIF rotation)" if rotated else "")
    return None


def allow_image_pixels(limit: int) -> None:
    """Let Pillow (which detectron2 reads images with) open images of up to ``limit`` pixels: its
    decompression-bomb guard refuses more than twice Image.MAX_IMAGE_PIXELS (~179 million by default).
    Process-wide: for --max-image-pixels, which a user passes for their own large images."""
    if limit <= 0:
        raise ValueError(f"--max-image-pixels must be > 0, got {limit}")
    Image.MAX_IMAGE_PIXELS = limit // 2  # Pillow raises above twice its limit (it warns above the limit itself)


def pixel_depth_problem(mode: str) -> Optional[str]:
    """Why an image of PIL ``mode`` cannot be used as it is (None: it can): 16-bit, 32-bit and float
    pixels, which detectron2's read_image clips into a flat 8-bit image."""
    if mode not in HIGH_DEPTH_MODES:
        return None
    return (f"has {HIGH_DEPTH_MODES[mode]} pixels (PIL mode {mode}), which detectron2 reads as a flat (blank) "
            "8-bit image; convert it to 8 bits per channel first (scaled to 0-255 as the data means)")


def _ends_whole(path: str, kind: str) -> bool:
    """Whether a JPEG ends with its end-of-image marker / a PNG with its IEND chunk (other formats: True)."""
    marker = {"JPEG": JPEG_END, "PNG": PNG_END}.get(kind)
    if marker is None:
        return True
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        return marker in f.read()


def _box_problem(bbox) -> Optional[str]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, width, height]"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return f"bbox {bbox!r} has a value that is not a finite number"
    return None


def _dropped_by_training(bbox, width, height) -> bool:
    """Whether detectron2's training drops this XYWH box: no area once clipped to the image."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return True
    if width is None or height is None:
        return False
    return min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0)


def _no_valid_polygon(segmentation) -> bool:
    """Whether a polygon 'segmentation' (a list of [x1, y1, x2, y2, ...]) has no polygon that
    detectron2's load_coco_json keeps (an even number of >= 6 coordinates); RLE dicts and an absent
    key are fine."""
    if not isinstance(segmentation, list):
        return False
    return not any(isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6 for p in segmentation)


def _summary(kind: str, examples: List[str]) -> str:
    shown = "; ".join(examples[:SHOWN]) + ("; ..." if len(examples) > SHOWN else "")
    return f"{len(examples)} {kind}: {shown}"


def check_coco_dataset(json_file: str, image_root: str, workers: int = 8) -> Dict[str, int]:
    """Check a COCO instances JSON and its images. Raises DatasetError naming the file and every
    problem; logs a warning with the count of boxes that training drops. Returns the counts
    (images, annotations, dropped_boxes)."""
    try:
        with open(json_file, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{json_file}: not valid JSON ({error})") from error
    images = coco.get("images", [])
    annotations = coco.get("annotations", [])
    categories = {c.get("id") for c in coco.get("categories", [])}
    problems: Dict[str, List[str]] = defaultdict(list)
    if not categories:
        problems["missing categories"].append("no 'categories'; a detection dataset needs at least one")

    for kind, records in (("image", images), ("annotation", annotations)):
        counts = Counter(r.get("id") for r in records)
        for duplicate in sorted((i for i, n in counts.items() if n > 1), key=str):
            problems[f"duplicate {kind} ids"].append(f"id={duplicate} ({counts[duplicate]} times)")
    sizes = {r.get("id"): (r.get("width"), r.get("height")) for r in images}
    files = Counter(r.get("file_name") for r in images)
    for name in sorted((n for n, count in files.items() if count > 1), key=str):
        ids = [r.get("id") for r in images if r.get("file_name") == name]
        problems["files listed more than once"].append(
            f"{name} (image ids {ids}): each record's ground truth is evaluated against all of its detections")
    for record in images:
        if record.get("width") is None or record.get("height") is None:
            problems["images without width/height"].append(
                f"id={record.get('id')} ({record.get('file_name')}): detectron2 needs both to load the dataset")

    dropped = []
    for annotation in annotations:
        where = f"annotation id={annotation.get('id')} (image_id={annotation.get('image_id')})"
        if annotation.get("image_id") not in sizes:
            problems["annotations of images not in 'images'"].append(where)
            continue
        if annotation.get("category_id") not in categories:
            problems["annotations of unknown categories"].append(f"{where}: category_id={annotation.get('category_id')}")
        bbox = annotation.get("bbox")
        problem = _box_problem(bbox)
        if problem:
            problems["malformed boxes"].append(f"{where}: {problem}")
        elif not annotation.get("iscrowd", 0) and _dropped_by_training(bbox, *sizes[annotation["image_id"]]):
            dropped.append(f"{where}: {bbox}")
        elif _no_valid_polygon(annotation.get("segmentation")):
            dropped.append(f"{where}: its 'segmentation' has no polygon of 3 or more points, so detectron2's "
                           "loader drops the whole annotation, box included (remove the 'segmentation' key to keep the box)")

    paths = [os.path.join(image_root, r.get("file_name", "")) for r in images]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(lambda r, p: image_problem(p, r.get("width"), r.get("height")), images, paths))
    for path, problem in zip(paths, found):
        if problem:
            problems["bad images"].append(f"{path}: {problem}")

    if images and not annotations:
        problems["no annotations"].append(
            f"{len(images)} images and no boxes: nothing to train on, and COCO metrics against it are NaN (to "
            "detect objects on unlabelled images use tools/predict.py)")
    if problems:
        lines = "\n".join("  " + _summary(kind, examples) for kind, examples in problems.items())
        raise DatasetError(f"{json_file} (images in {image_root}) would fail during training or give wrong metrics:\n{lines}")
    if dropped:
        logger.warning(
            f"{json_file}: training drops {len(dropped)} of {len(annotations)} boxes (no area inside the image, "
            f"or a 'segmentation' without a valid polygon); COCO evaluation still counts them. "
            + _summary("dropped", dropped)
        )
    return {"images": len(images), "annotations": len(annotations), "dropped_boxes": len(dropped)}
