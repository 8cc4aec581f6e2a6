"""The loss on the test datasets during training, logged beside the training loss (the question
"is it overfitting?" that detectron2 leaves to the user): every MODEL.FOCAL_RETINANET.VALIDATION_LOSS_PERIOD
(LazyConfig: train.validation_loss_period) iterations and after the last, the model's losses (in
training mode, without gradients) averaged over the images of the test datasets, resized as at test
time, as "validation_loss" (their sum) and "validation_<name>" for each loss term."""
import contextlib
import copy
from typing import Dict

import torch
from torch import nn

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.utils import comm

from .data.mapper import FileNamingDatasetMapper


def build_validation_loader(cfg):
    """DATASETS.TEST, one image per batch, annotations kept, resized as at test time (no flips)."""
    mapper = FileNamingDatasetMapper(cfg, is_train=True, augmentations=[
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)])
    return build_detection_test_loader(cfg, list(cfg.DATASETS.TEST), mapper=mapper)


def instantiate_validation_loader(cfg):
    """A LazyConfig's dataloader.test with its mapper keeping the annotations (is_train=True; its
    augmentations, the test resize, unchanged)."""
    node = copy.deepcopy(cfg.dataloader.test)
    node.mapper.is_train = True
    return instantiate(node)


@contextlib.contextmanager
def batch_norms_frozen(model: nn.Module):
    """The model's BatchNorm layers in eval mode (normalising with, and not updating, their running
    statistics) while the rest stays as it is; their modes restored afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


@torch.no_grad()
def mean_losses(model, loader) -> Dict[str, float]:
    """The model's loss dict averaged over every image of ``loader`` (sharded over processes, as
    detectron2's test loader is). Every process runs as many forward passes as the largest shard
    (repeating its last batch, not counted), because the loss normaliser is all-reduced in each.
    BatchNorm layers normalise with their running statistics and leave them unchanged (the test
    images must not become part of the model)."""
    with batch_norms_frozen(model):
        return _mean_losses(model, loader)


def _mean_losses(model, loader) -> Dict[str, float]:
    sums: Dict[str, float] = {}
    images, batches, last = 0, 0, None
    for last in loader:
        for name, value in model(last).items():
            sums[name] = sums.get(name, 0.0) + float(value) * len(last)
        images, batches = images + len(last), batches + 1
    for _ in range(max(comm.all_gather(batches)) - batches):
        model(last)
    totals: Dict[str, float] = {}
    for process_sums, process_images in comm.all_gather((sums, images)):
        for name, value in process_sums.items():
            totals[name] = totals.get(name, 0.0) + value
        totals["_images"] = totals.get("_images", 0) + process_images
    count = totals.pop("_images")
    return {name: value / count for name, value in totals.items()}


class ValidationLoss(HookBase):
    """Puts the validation losses into the trainer's storage every ``period`` iterations and after
    the last (every process takes part; the main process's writers log them)."""

    def __init__(self, period: int, loader):
        self.period, self.loader = period, loader

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter == self.trainer.max_iter:
            losses = mean_losses(self.trainer.model, self.loader)
            self.trainer.storage.put_scalars(
                validation_loss=sum(losses.values()), **{f"validation_{k}": v for k, v in losses.items()},
                smoothing_hint=False)
