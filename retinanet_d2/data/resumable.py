"""A training loader that resumes where a checkpointed run stopped.

detectron2's ``TrainingSampler`` restarts its index stream when a run is resumed, so a resumed run
sees other images than the uninterrupted one would have. ``ResumableTrainingSampler`` yields the same
infinite, seeded stream and skips what the first ``start_iter`` iterations consumed. The skip is
exact without aspect-ratio grouping or when all images fall in one group; with several groups, the
images that sat in the grouping buffers at the checkpoint are not replayed. The same for yacs
configs (``build_resumable_train_loader``) and LazyConfig ones (``instantiate_resumable_train_loader``);
engine/yacs_parts.py and engine/lazy_parts.py call them.
"""
import itertools
import logging
from typing import Dict, List

from detectron2.config import instantiate
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from .mapper import FileNamingDatasetMapper

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler``'s stream for this process, after its first ``skip`` indices."""

    def __init__(self, size: int, skip: int, shuffle: bool = True, seed=None):
        """
        Args:
            size: number of dataset records.
            skip: indices of this process to drop from the start of the stream.
            shuffle, seed: as for TrainingSampler (seed None: one shared random seed).
        """
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._skip = skip

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self._skip, None)


def resumable_sampler(size: int, total_batch_size: int, start_iter: int, seed: int) -> ResumableTrainingSampler:
    """The sampler of ``size`` records continued at ``start_iter`` (``total_batch_size`` images per
    iteration over all processes; ``seed`` < 0: a random one, which a resumed run does not share)."""
    skip = start_iter * (total_batch_size // comm.get_world_size())
    return ResumableTrainingSampler(size, skip=skip, seed=seed if seed >= 0 else None)


def build_resumable_train_loader(cfg, records: List[Dict], start_iter: int):
    """detectron2's train loader for a yacs ``cfg`` over ``records``, continuing at ``start_iter``;
    seeded with cfg.SEED when it is >= 0. Samplers other than TrainingSampler restart (logged)."""
    mapper = FileNamingDatasetMapper(cfg, is_train=True)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        if start_iter:
            logger.warning(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN} restarts its stream on resume")
        return build_detection_train_loader(cfg, dataset=records, mapper=mapper)
    sampler = resumable_sampler(len(records), cfg.SOLVER.IMS_PER_BATCH, start_iter, cfg.SEED)
    return build_detection_train_loader(cfg, dataset=records, sampler=sampler, mapper=mapper)


def instantiate_resumable_train_loader(node, records: List[Dict], start_iter: int, seed: int):
    """A LazyConfig's ``dataloader.train`` over ``records`` (its instantiated dataset), continuing at
    ``start_iter``; a sampler the config sets itself restarts (logged)."""
    spec = {key: node[key] for key in node}
    spec["dataset"] = records
    if node.get("sampler") is None:
        spec["sampler"] = resumable_sampler(len(records), node.total_batch_size, start_iter, seed)
    elif start_iter:
        logger.warning("dataloader.train.sampler is set in the config: its stream restarts on resume")
    return instantiate(spec)
