"""Hand-made COCO datasets for tests: images, a JSON, and broken image files."""
import json

import cv2
import numpy as np


def write_image(path, size=(40, 30)):
    """A (height, width) = size textured image; the format follows the file ending."""
    image = (np.arange(size[0] * size[1] * 3).reshape(size[0], size[1], 3) % 251).astype(np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def write_coco(folder, images, annotations, categories=({"id": 1, "name": "a"},)):
    json_file = folder / "annotations.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return json_file


def image_record(image_id, name, width=30, height=40):
    return {"id": image_id, "file_name": name, "width": width, "height": height}


def box(ann_id, image_id, bbox, category_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0, "area": 1.0}


def broken_image_files(folder):
    """(good.jpg, truncated.jpg, garbage.jpg): a whole JPEG, one cut 81 bytes short, random bytes."""
    write_image(folder / "good.jpg")
    whole = write_image(folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[:-81])
    (folder / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    return ["good.jpg", "missing.jpg", "truncated.jpg", "garbage.jpg"]
