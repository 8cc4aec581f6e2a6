"""Test-time augmentation for FocalRetinaNet (detectron2 has it for R-CNN models only), behind
detectron2's keys: TEST.AUG.MIN_SIZES (short sides), TEST.AUG.MAX_SIZE and TEST.AUG.FLIP
(horizontal flips too). Each augmented image goes through the model; its detections (before
detector_postprocess) are mapped back to the original image, merged with class-wise NMS at the
model's NMS threshold, the best DETECTIONS_PER_IMAGE kept, then clipped to the image and empty
boxes dropped, as detector_postprocess does: one size without flips is plain inference.
"""
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Boxes, Instances


class FocalRetinaNetWithTTA(nn.Module):
    """``model`` (a FocalRetinaNet in eval mode) evaluated on resized (and flipped) copies of each image."""

    @configurable
    def __init__(self, model: nn.Module, *, min_sizes: Sequence[int], max_size: int, flip: bool, batch_size: int = 1):
        """
        Args:
            model: the detector; its test_nms_thresh and max_detections_per_image merge the detections.
            min_sizes: short sides to resize each image to (TEST.AUG.MIN_SIZES).
            max_size: the longest side allowed (TEST.AUG.MAX_SIZE).
            flip: also each size flipped horizontally (TEST.AUG.FLIP).
            batch_size: augmented images per forward pass.
        """
        super().__init__()
        if not min_sizes:
            raise ValueError("min_sizes is empty: test-time augmentation needs at least one size")
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model, self.batch_size = model, batch_size
        self.mapper = DatasetMapperTTA(min_sizes=list(min_sizes), max_size=max_size, flip=flip)

    @classmethod
    def from_config(cls, cfg, model: nn.Module):
        """TEST.AUG's keys; an empty TEST.AUG.MIN_SIZES is refused by name."""
        if not cfg.TEST.AUG.MIN_SIZES:
            raise ValueError("TEST.AUG.MIN_SIZES is empty: test-time augmentation needs at least one size")
        return {"model": model, "min_sizes": cfg.TEST.AUG.MIN_SIZES, "max_size": cfg.TEST.AUG.MAX_SIZE,
                "flip": cfg.TEST.AUG.FLIP}

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Inputs as the model's test loader gives them ("image" (3, H, W), "height", "width")."""
        return [{"instances": self.detect(x)} for x in batched_inputs]

    def detect(self, image_input: Dict) -> Instances:
        """The merged detections of one input, in original image pixels (height x width)."""
        augmented = self.mapper(image_input)
        boxes, scores, classes = [], [], []
        for start in range(0, len(augmented), self.batch_size):
            chunk = augmented[start : start + self.batch_size]
            for x, instances in zip(chunk, self.model.detect_unscaled([x["image"] for x in chunk])):
                instances = instances.to("cpu")
                original = x["transforms"].inverse().apply_box(instances.pred_boxes.tensor.numpy())
                boxes.append(torch.as_tensor(original, dtype=torch.float32))
                scores.append(instances.scores)
                classes.append(instances.pred_classes)
        boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        keep = batched_nms(boxes, scores, classes, self.model.test_nms_thresh)[: self.model.max_detections_per_image]
        merged = Boxes(boxes[keep])
        merged.clip((image_input["height"], image_input["width"]))
        nonempty = merged.nonempty()
        return Instances((image_input["height"], image_input["width"]), pred_boxes=merged[nonempty],
                         scores=scores[keep][nonempty], pred_classes=classes[keep][nonempty])
