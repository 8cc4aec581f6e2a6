"""Training images for the analyses: the first images of a config's training set, mapped as in
training (DatasetMapper with is_train=True), one image per batch."""
from typing import Iterator, List

from detectron2.data import DatasetCatalog, DatasetMapper


def first_training_batches(cfg, count: int) -> Iterator[List[dict]]:
    """Single-image batches of the first ``count`` records of ``cfg.DATASETS.TRAIN[0]``."""
    mapper = DatasetMapper(cfg, is_train=True)
    for record in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:count]:
        yield [mapper(record)]
