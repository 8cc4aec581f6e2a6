"""Backbone pretraining for the study, in the role of the paper's ImageNet pretraining: the config's
ResNet learns to classify object crops (each of the dataset's classes, plus background) of another
dataset, and is saved as a detectron2 checkpoint of ``backbone.bottom_up.*`` tensors that
MODEL.WEIGHTS loads. No detection loss is involved, so the init favours none of the compared losses.
"""
import json
import math
import os
import time
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.structures import Boxes, BoxMode
from detectron2.structures.boxes import pairwise_intersection

from retinanet_d2.atomic import atomic_open

CONTEXT = 2.0  # a crop's side, in units of its object's longer side
BACKBONE_PREFIX = "backbone.bottom_up."
WARMUP = 100  # iterations of linear learning-rate warmup
# The study's pretraining data: the demo's splits (256 px, 1-8 objects of 10-179 px), other images
# than the study's small-object splits, as ImageNet is to COCO.
PRETRAIN_DATASETS = ("shapes_train", "shapes_val")


def _square_crop(image: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """(size, size, 3) resize of the square of ``side`` px centred on (cx, cy); borders replicated."""
    side = max(2, int(round(side)))
    patch = cv2.getRectSubPix(image, (side, side), (float(cx), float(cy)))
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def _overlaps(crop: Tuple[float, float, float, float], boxes: Boxes, fraction: float) -> bool:
    """Whether the XYXY ``crop`` covers more than ``fraction`` of any box in ``boxes``."""
    covered = pairwise_intersection(Boxes(torch.tensor([crop], dtype=boxes.tensor.dtype)), boxes)[0]
    return bool((covered > fraction * boxes.area()).any())


def object_crops(records: List[Dict], size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Crops of detectron2 dataset records (load_coco_json's format, images read from file_name).

    Per object: its square of CONTEXT times its longer side, labelled with its category_id, and one
    background square of the same side at a random place that covers at most 10% of every object
    (up to 20 tries; none if no place fits), labelled -1.

    Returns:
        images: (N, 3, size, size) uint8, channels in the file's order (BGR).
        labels: (N,) int64, the object's category_id, or -1 for background.
    """
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for record in records:
        image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(
                f"{record['file_name']}: not a readable image (dataset record {record.get('image_id')})")
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]],
                         dtype=np.float64).reshape(-1, 4)
        height, width = image.shape[:2]
        box_list = Boxes(torch.from_numpy(boxes))
        for annotation, (x0, y0, x1, y1) in zip(record["annotations"], boxes):
            side = CONTEXT * max(x1 - x0, y1 - y0)
            crops.append(_square_crop(image, (x0 + x1) / 2, (y0 + y1) / 2, side, size))
            labels.append(annotation["category_id"])
            for _ in range(20):
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
                if not _overlaps((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), box_list, 0.1):
                    crops.append(_square_crop(image, cx, cy, side, size))
                    labels.append(-1)
                    break
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


class CropClassifier(nn.Module):
    """The config's ResNet (MODEL.RESNETS, as the detector builds it, nothing frozen), global average
    pooling of its last output and a linear classifier: (N, 3, H, W) uint8-range pixels -> (N, K) logits."""

    def __init__(self, cfg, num_outputs: int):
        super().__init__()
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        self.bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        shapes = self.bottom_up.output_shape()
        self.last = max(shapes, key=lambda name: shapes[name].stride)  # res5 for the detector's ResNet
        self.classifier = nn.Linear(shapes[self.last].channels, num_outputs)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.bottom_up((images.float() - self.pixel_mean) / self.pixel_std)[self.last]
        return self.classifier(features.mean(dim=(2, 3)))


def _with_background(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels)


@torch.no_grad()
def accuracy(model: CropClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """Share of ``images`` whose highest logit is their label."""
    model.eval()
    correct = sum(int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                  for i in range(0, len(images), batch))
    return correct / len(images)


def pretrain_backbone(cfg, train_dataset: str, val_dataset: str, output: str, iterations: int,
                      crop_size: int = 64, batch: int = 128, lr: float = 0.05, seed: int = 0) -> Dict[str, float]:
    """Train CropClassifier(cfg) on crops of ``train_dataset`` (SGD, momentum 0.9, weight decay 1e-4,
    linear warmup over WARMUP iterations then cosine decay from ``lr``, random horizontal flips) and
    save its ResNet to ``output`` as {"model": {"backbone.bottom_up.<name>": tensor}}. Returns the
    crops' counts and the accuracy on ``val_dataset``'s crops (chance: 1 / (classes + 1))."""
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    train_images, train_labels = object_crops(DatasetCatalog.get(train_dataset), crop_size, seed)
    val_images, val_labels = object_crops(DatasetCatalog.get(val_dataset), crop_size, seed + 1)
    train_labels, val_labels = (_with_background(x, num_classes) for x in (train_labels, val_labels))
    torch.manual_seed(seed)
    model = CropClassifier(cfg, num_classes + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / iterations))
        index = torch.randint(len(train_images), (batch,), generator=generator)
        images = train_images[index]
        flip = torch.rand(batch, generator=generator) < 0.5
        images[flip] = images[flip].flip(-1)
        loss = nn.functional.cross_entropy(model(images), train_labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {BACKBONE_PREFIX + name: value for name, value in model.bottom_up.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_open(output, "wb") as f:
        torch.save({"model": state}, f)
    return {"train_crops": len(train_images), "val_crops": len(val_images),
            "val_accuracy": accuracy(model, val_images, val_labels), "final_loss": float(loss.detach())}



def ensure_pretrained_backbone(cfg, iterations: int, datasets: Tuple[str, str] = PRETRAIN_DATASETS) -> Dict:
    """The record of cfg.MODEL.WEIGHTS as a pretrained backbone, pretraining it first (on the
    (train, val) ``datasets``, ``iterations`` steps) if the file does not exist. The record (iterations,
    accuracy, wall time) is kept beside the weights as <weights>.json; ValueError naming the file if an
    existing record is not valid JSON or is for another number of iterations."""
    weights = cfg.MODEL.WEIGHTS
    record_path = weights + ".json"
    if os.path.exists(weights):
        if not os.path.exists(record_path):
            return {"weights": weights, "note": "no pretraining record beside it (not made by this tool)"}
        with open(record_path, encoding="utf-8") as f:
            try:
                record = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{record_path}: not a pretraining record ({error}); delete it and {weights} "
                                 "to pretrain again") from error
        if record.get("iterations") != iterations:
            raise ValueError(f"{weights} was pretrained for {record.get('iterations')} iterations ({record_path}), "
                             f"not {iterations}; delete both files to pretrain again")
        return record
    start = time.perf_counter()
    record = {"weights": weights, "iterations": iterations, "datasets": list(datasets),
              **pretrain_backbone(cfg, *datasets, weights, iterations)}
    record["wall_s"] = time.perf_counter() - start
    with atomic_open(record_path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return record
