"""Sliced (tiled) inference for images much larger than the training size: aerial and satellite
scenes, microscopy slides, inspection images with hundreds of small objects. Each image is cut into
square tiles of ``tile_size`` pixels that overlap their neighbours by at least ``overlap`` pixels
(spread evenly, the last tile of a row or column ending at the image's edge, so every tile has the
full size); the tiles go
through the model ``batch_size`` at a time, so memory is bounded by the batch, not the scene.

The merge, per image:

1. each tile's detections are shifted back to the image's pixels;
2. a detection is *cut* when it touches an edge of its tile that lies inside the image (within
   EDGE_MARGIN pixels): the tile saw only part of that object. A cut detection is dropped when a
   detection of the same class that is not cut covers at least COVERED of its area (the tile that saw
   the object whole reported it);
3. class-wise NMS at the model's test NMS threshold over what is left, then the model's
   ``max_detections_per_image`` for the whole image, then detectron2's ``detector_postprocess``
   (scaled to "height" x "width", clipped, empty boxes dropped).

An object is reported once with the box of the tile that sees it whole when it fits in the overlap
(choose ``overlap`` >= the largest object); a larger one can be reported in pieces. One tile that
covers the whole image gives exactly the model's plain inference.
"""
import math
from typing import Dict, List

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.layers import batched_nms
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances, pairwise_ioa

EDGE_MARGIN = 2.0  # pixels: a box this close to an inner tile edge is cut by it
COVERED = 0.5  # share of a cut box's area inside a whole detection of its class for it to be dropped


def tile_starts(length: int, tile_size: int, overlap: int) -> List[int]:
    """First pixel of each tile along a side of ``length`` pixels: the fewest tiles whose neighbours
    share at least ``overlap`` pixels, spread evenly from 0 to the last, which ends at the edge; [0]
    when one tile covers the side."""
    if length <= tile_size:
        return [0]
    count = math.ceil((length - tile_size) / (tile_size - overlap)) + 1
    return [round(i * (length - tile_size) / (count - 1)) for i in range(count)]


def check_tiles(tile_size: int, overlap: int, batch_size: int) -> None:
    """ValueError naming the argument that makes no tiling."""
    if tile_size <= 0:
        raise ValueError(f"tile_size must be > 0, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be >= 0 and smaller than the tile size ({tile_size}), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class SlicedInference(nn.Module):
    """``model`` (a FocalRetinaNet in eval mode) run on overlapping tiles of each image (see the module)."""

    def __init__(self, model: nn.Module, *, tile_size: int, overlap: int, batch_size: int):
        """
        Args:
            model: the detector; its detect_unscaled, test_nms_thresh and max_detections_per_image are used.
            tile_size: side of the square tiles, in the model's input pixels.
            overlap: pixels shared by neighbouring tiles.
            batch_size: tiles per forward pass.
        """
        super().__init__()
        check_tiles(tile_size, overlap, batch_size)
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model, self.tile_size, self.overlap, self.batch_size = model, tile_size, overlap, batch_size

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Inputs as the model's test loader gives them ("image" (3, H, W), "height", "width")."""
        return [{"instances": self.detect(x)} for x in batched_inputs]

    def detect(self, image_input: Dict) -> Instances:
        """The merged detections of one input, in its original pixels ("height" x "width")."""
        image = image_input["image"]
        height, width = image.shape[-2:]
        origins = [(y, x) for y in tile_starts(height, self.tile_size, self.overlap)
                   for x in tile_starts(width, self.tile_size, self.overlap)]
        boxes, scores, classes, cut = [], [], [], []
        for first in range(0, len(origins), self.batch_size):
            chunk = origins[first : first + self.batch_size]
            tiles = [image[:, y : y + self.tile_size, x : x + self.tile_size] for y, x in chunk]
            for (y, x), tile, found in zip(chunk, tiles, self.model.detect_unscaled(tiles)):
                tile_boxes = found.pred_boxes.tensor
                cut.append(_touches_inner_edges(tile_boxes, x, y, tile.shape[-1], tile.shape[-2], width, height))
                boxes.append(tile_boxes + tile_boxes.new_tensor([x, y, x, y]))
                scores.append(found.scores)
                classes.append(found.pred_classes)
        boxes, scores, classes, cut = torch.cat(boxes), torch.cat(scores), torch.cat(classes), torch.cat(cut)
        kept, whole = torch.ones_like(cut), ~cut
        if cut.any() and whole.any():
            covered = pairwise_ioa(Boxes(boxes[whole]), Boxes(boxes[cut]))  # (whole, cut): share of each cut box
            same_class = classes[whole][:, None] == classes[cut][None, :]
            kept[cut.nonzero().flatten()] = ~((covered >= COVERED) & same_class).any(dim=0)
        boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        keep = batched_nms(boxes, scores, classes, self.model.test_nms_thresh)[: self.model.max_detections_per_image]
        merged = Instances((height, width), pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=classes[keep])
        return detector_postprocess(merged, image_input.get("height", height), image_input.get("width", width))


def _touches_inner_edges(boxes: Tensor, x: int, y: int, tile_width: int, tile_height: int,
                         width: int, height: int) -> Tensor:
    """(D,) bool: which of a tile's boxes (D, 4) in its own pixels come within EDGE_MARGIN of one of
    its edges that lie inside the image (the tile at (x, y) of an image width x height)."""
    left = boxes[:, 0] <= EDGE_MARGIN if x > 0 else torch.zeros_like(boxes[:, 0], dtype=torch.bool)
    top = boxes[:, 1] <= EDGE_MARGIN if y > 0 else torch.zeros_like(left)
    right = boxes[:, 2] >= tile_width - EDGE_MARGIN if x + tile_width < width else torch.zeros_like(left)
    bottom = boxes[:, 3] >= tile_height - EDGE_MARGIN if y + tile_height < height else torch.zeros_like(left)
    return left | top | right | bottom
