"""Drawing detections with detectron2's Visualizer."""
from typing import List

import numpy as np
import torch

from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer


def draw_detections(
    image_bgr: np.ndarray, instances: Instances, class_names: List[str], score_thresh: float = 0.5
) -> np.ndarray:
    """(H, W, 3) uint8 RGB: ``image_bgr`` with the detections scoring at least ``score_thresh``, each
    class in its own colour (detectron2's colormap, by class index)."""
    instances = instances.to(torch.device("cpu"))
    instances = instances[instances.scores >= score_thresh]
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata=None)
    classes = instances.pred_classes.tolist()
    labels = [f"{class_names[c]} {s:.2f}" for c, s in zip(classes, instances.scores.tolist())]
    drawn = visualizer.overlay_instances(boxes=instances.pred_boxes, labels=labels, assigned_colors=class_colors(classes))
    return drawn.get_image()


def class_colors(classes: List[int]) -> List[np.ndarray]:
    """An RGB colour in [0, 1] for each class index: the same class, the same colour."""
    palette = colormap(rgb=True, maximum=1)
    return [palette[c % len(palette)] for c in classes]


def tile(images: List[np.ndarray], columns: int) -> np.ndarray:
    """Images of equal size (H, W, 3) as one (rows*H, columns*W, 3) grid, blanks filled black."""
    height, width, _ = images[0].shape
    rows = -(-len(images) // columns)
    grid = np.zeros((rows * height, columns * width, 3), dtype=images[0].dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return grid
