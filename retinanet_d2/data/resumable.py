"""A training loader that resumes where a checkpointed run stopped.

detectron2's ``TrainingSampler`` restarts its index stream when a run is resumed, so a resumed run
sees other images than the uninterrupted one would have. ``ResumableTrainingSampler`` yields the same
infinite, seeded stream and skips what the first ``start_iter`` iterations consumed. The skip is
exact without aspect-ratio grouping or when all images fall in one group; with several groups, the
images that sat in the grouping buffers at the checkpoint are not replayed.
"""
import itertools
import logging

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from .mapper import FileNamingDatasetMapper


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


def build_resumable_train_loader(cfg, start_iter: int):
    """detectron2's train loader for ``cfg``, continuing at iteration ``start_iter``.

    The stream is seeded with cfg.SEED when it is >= 0, so that a resumed run gets the same stream.
    Samplers other than TrainingSampler are built by detectron2 and restart (logged).
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logging.getLogger(__name__).warning(
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN} restarts its stream on resume"
        )
        return build_detection_train_loader(cfg, mapper=FileNamingDatasetMapper(cfg, is_train=True))
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    per_process_batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = ResumableTrainingSampler(
        len(dataset), skip=start_iter * per_process_batch, seed=cfg.SEED if cfg.SEED >= 0 else None
    )
    mapper = FileNamingDatasetMapper(cfg, is_train=True)
    return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, mapper=mapper)
