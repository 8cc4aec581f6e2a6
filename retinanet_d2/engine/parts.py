"""``RunParts``: what a run is built from, the same for every kind of config. One adapter per kind
(yacs_parts.YacsParts, lazy_parts.LazyParts) converts a config into these parts; the training loop,
evaluation and the Predictor use only them. ``run_parts(cfg)`` is the one place that picks."""
import abc
from typing import Dict, Iterable, List

from torch import nn

import detectron2.data.transforms as T

from ..config import naming_config_keys
from ..data import check_dataset_files, check_num_classes, check_same_classes
from ..modeling.sliced import SlicedInference, check_tiles
from .settings import RunSettings


class RunParts(abc.ABC):
    """A config turned into a run's parts. ``settings`` holds its plain values (settings.py)."""

    def __init__(self, cfg, settings: RunSettings):
        self.cfg, self.settings = cfg, settings

    @abc.abstractmethod
    def check_values(self) -> None:
        """Raise ValueError naming the key of a value that would only crash later."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The config's model on its device (not yet wrapped for several processes)."""

    @abc.abstractmethod
    def build_optimizer(self, model: nn.Module):
        """The config's optimizer over ``model``'s parameters."""

    @abc.abstractmethod
    def build_lr_scheduler(self, optimizer):
        """The config's learning-rate schedule of ``optimizer`` (a torch LR scheduler)."""

    @abc.abstractmethod
    def training_records(self) -> List[Dict]:
        """The training datasets' records, filtered as the config says."""

    @abc.abstractmethod
    def build_train_loader(self, records: List[Dict], start_iter: int) -> Iterable:
        """The train loader over ``records``, its stream continued at ``start_iter`` (data/resumable.py)."""

    @abc.abstractmethod
    def build_test_loader(self, dataset_name: str) -> Iterable:
        """The test loader of one of ``settings.test_datasets``."""

    @abc.abstractmethod
    def build_evaluator(self, dataset_name: str, tta: bool = False):
        """The evaluator of ``dataset_name`` (None where the config has none); ``tta``: for the
        test-time augmented model, writing into its own folder."""

    @abc.abstractmethod
    def build_validation_loader(self) -> Iterable:
        """The test datasets with their annotations, resized as at test time (validation_loss.py)."""

    @abc.abstractmethod
    def test_resize(self) -> T.Augmentation:
        """The test-time resize (the Predictor's)."""

    @property
    @abc.abstractmethod
    def input_format(self) -> str:
        """The channel order the model takes ("BGR", "RGB", ...)."""

    @abc.abstractmethod
    def save_config(self, path: str) -> None:
        """Write the config to ``path`` atomically."""

    TILE_KEYS: Dict[str, str] = {}  # SlicedInference's argument -> the config key it comes from

    def check_tiles(self) -> None:
        """With sliced inference on, ValueError naming the config key (TILE_KEYS) of a tile setting
        that makes no tiling."""
        tiles = self.settings.tiles
        if tiles["size"] > 0:
            with naming_config_keys(self.TILE_KEYS):
                check_tiles(tiles["size"], tiles["overlap"], tiles["batch_size"])

    def inference_model(self, model: nn.Module) -> nn.Module:
        """``model``, or with sliced inference on, ``model`` run on tiles (modeling/sliced.py)."""
        tiles = self.settings.tiles
        if tiles["size"] <= 0:
            return model
        return SlicedInference(model, tile_size=tiles["size"], overlap=tiles["overlap"], batch_size=tiles["batch_size"])

    def checked_training_records(self) -> List[Dict]:
        """training_records with the datasets' files checked (data/checks.py) and their class count
        compared with the model's; raises naming the file, record or key."""
        for name in self.settings.train_datasets:
            check_dataset_files(name)
        records = self.training_records()
        for name in self.settings.train_datasets:  # a COCO json's classes are known once it is loaded
            check_num_classes(name, self.settings.num_classes, key=self.settings.num_classes_key)
        return records

    def checked_test_loader(self, dataset_name: str) -> Iterable:
        """build_test_loader with the dataset's files checked, and its class count compared with the
        model's and its class names with the training sets' (where those are loaded)."""
        check_dataset_files(dataset_name)
        loader = self.build_test_loader(dataset_name)
        check_num_classes(dataset_name, self.settings.num_classes, key=self.settings.num_classes_key)
        check_same_classes(dataset_name, self.settings.train_datasets)
        return loader


def run_parts(cfg) -> RunParts:
    """The adapter of ``cfg``'s kind: a yacs CfgNode (this project's node added where missing) or a
    LazyConfig (``model`` / ``dataloader`` / ``optimizer`` / ``lr_multiplier`` / ``train``)."""
    from detectron2.config import CfgNode

    if isinstance(cfg, CfgNode):
        from .yacs_parts import YacsParts

        return YacsParts(cfg)
    from .lazy_parts import LazyParts

    return LazyParts(cfg)

