"""The adapter of LazyConfigs (``.py`` files with ``model`` / ``dataloader`` / ``optimizer`` /
``lr_multiplier`` / ``train``, as detectron2's ``tools/lazyconfig_train_net.py`` takes them).

``train`` is detectron2's ``common/train.py`` plus this project's optional keys, each defaulting to
the yacs key of the same meaning (config.DEFAULTS): ``amp.dtype`` and ``amp.test``
(MODEL.FOCAL_RETINANET.AMP_DTYPE / TEST_AMP), ``best_checkpointer`` (val_metric, mode),
``validation_loss_period``, ``tta`` (enabled, min_sizes, max_size, flip: TEST.AUG),
``precise_bn`` (enabled, num_iter: TEST.PRECISE_BN) and ``tiles`` (size, overlap, batch_size:
MODEL.FOCAL_RETINANET.TILE_*)."""
import copy
import os
from typing import Dict, Iterable, List

import torch

import detectron2.data.transforms as T
from detectron2.config import LazyConfig, instantiate
from detectron2.solver import LRMultiplier

from ..amp import resolve_amp_dtype
from ..atomic import atomic_path
from ..config import DEFAULTS
from ..data.resumable import instantiate_resumable_train_loader
from ..validation_loss import instantiate_validation_loader
from .parts import RunParts
from .run_setup import BEST_MODES, one_of, positive
from .settings import RunSettings
from .step import check_step_precision

# Keys of detectron2's LazyConfig ``train`` node (configs/common/train.py) and this project's.
LAZY_TRAIN_KEYS = {
    "output_dir", "init_checkpoint", "max_iter", "amp", "ddp", "checkpointer", "eval_period",
    "log_period", "device", "seed", "cudnn_benchmark", "float32_precision", "best_checkpointer",
    "validation_loss_period", "tta", "precise_bn", "tiles",
}
LAZY_AMP_KEYS = {"enabled", "dtype", "test"}
LAZY_TTA_KEYS = {"enabled", "min_sizes", "max_size", "flip"}
LAZY_PRECISE_BN_KEYS = {"enabled", "num_iter"}
LAZY_TILES_KEYS = {"size", "overlap", "batch_size"}


def _names(node) -> tuple:
    """A dataset node's ``names`` (a string or a list) as a tuple."""
    names = node.dataset.names
    return (names,) if isinstance(names, str) else tuple(names)


def lazy_settings(cfg) -> RunSettings:
    """The RunSettings of a LazyConfig; absent project keys take their yacs defaults."""
    train, node, test = cfg.train, DEFAULTS.MODEL.FOCAL_RETINANET, DEFAULTS.TEST
    amp = train.get("amp", {})
    device = torch.device(train.device).type
    tta = {"enabled": test.AUG.ENABLED, "min_sizes": tuple(test.AUG.MIN_SIZES), "max_size": test.AUG.MAX_SIZE,
           "flip": test.AUG.FLIP, **train.get("tta", {})}
    return RunSettings(
        output_dir=train.output_dir, output_dir_key="train.output_dir",
        weights=train.init_checkpoint, weights_key="train.init_checkpoint",
        max_iter=train.max_iter, checkpointer=dict(train.checkpointer), eval_period=train.eval_period,
        log_period=train.log_period, train_amp=bool(amp.get("enabled", False)), test_amp=bool(amp.get("test", node.TEST_AMP)),
        device=device, amp_dtype=resolve_amp_dtype(amp.get("dtype", node.AMP_DTYPE), device, key="train.amp.dtype"),
        best={"val_metric": node.BEST_METRIC, "mode": node.BEST_MODE, **train.get("best_checkpointer", {})},
        validation_loss_period=train.get("validation_loss_period", node.VALIDATION_LOSS_PERIOD),
        tta={**tta, "min_sizes": tuple(tta["min_sizes"])},
        tiles={"size": node.TILE_SIZE, "overlap": node.TILE_OVERLAP, "batch_size": node.TILE_BATCH_SIZE,
               **train.get("tiles", {})},
        precise_bn={"enabled": test.PRECISE_BN.ENABLED, "num_iter": test.PRECISE_BN.NUM_ITER, **train.get("precise_bn", {})},
        train_datasets=_names(cfg.dataloader.train) if "train" in cfg.dataloader else (),
        test_datasets=_names(cfg.dataloader.test) if "test" in cfg.dataloader else (),
        num_classes=cfg.model.num_classes, num_classes_key="model.num_classes",
        seed=train.get("seed", -1), cudnn_benchmark=bool(train.get("cudnn_benchmark", False)),
        ddp=dict(train.get("ddp", {})),
    )


class LazyParts(RunParts):
    """A LazyConfig's run parts, instantiated from its nodes as lazyconfig_train_net.py does."""

    TILE_KEYS = {"tile_size": "train.tiles.size", "overlap": "train.tiles.overlap", "batch_size": "train.tiles.batch_size"}

    def __init__(self, cfg):
        super().__init__(cfg, lazy_settings(cfg))

    def check_values(self) -> None:
        cfg, train = self.cfg, self.cfg.train
        unknown = [f"train.{k}" for k in sorted(set(train) - LAZY_TRAIN_KEYS)]
        for key, known in (("amp", LAZY_AMP_KEYS), ("tta", LAZY_TTA_KEYS), ("precise_bn", LAZY_PRECISE_BN_KEYS),
                           ("tiles", LAZY_TILES_KEYS)):
            unknown += sorted(f"train.{key}.{k}" for k in set(train.get(key, {})) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) in train: {', '.join(unknown)} (known: {', '.join(sorted(LAZY_TRAIN_KEYS))}; "
                f"train.amp: {', '.join(sorted(LAZY_AMP_KEYS))}; train.tta: {', '.join(sorted(LAZY_TTA_KEYS))}; "
                f"train.precise_bn: {', '.join(sorted(LAZY_PRECISE_BN_KEYS))}; train.tiles: {', '.join(sorted(LAZY_TILES_KEYS))})"
            )
        one_of("train.best_checkpointer.mode", self.settings.best["mode"], BEST_MODES)
        self.check_tiles()
        check_step_precision(self.settings)
        batch = cfg.dataloader.get("train", {}).get("total_batch_size")
        positive([("train.max_iter", train.max_iter), ("train.checkpointer.period", train.get("checkpointer", {}).get("period")),
                  ("dataloader.train.total_batch_size", batch)])

    def build_model(self) -> torch.nn.Module:
        return instantiate(self.cfg.model).to(self.cfg.train.device)

    def build_optimizer(self, model):
        node = copy.deepcopy(self.cfg.optimizer)  # the model object does not join the config
        node.params.model = model
        return instantiate(node)

    def build_lr_scheduler(self, optimizer):
        return LRMultiplier(optimizer, multiplier=instantiate(self.cfg.lr_multiplier), max_iter=self.cfg.train.max_iter)

    def training_records(self) -> List[Dict]:
        return instantiate(self.cfg.dataloader.train.dataset)

    def build_train_loader(self, records: List[Dict], start_iter: int) -> Iterable:
        return instantiate_resumable_train_loader(self.cfg.dataloader.train, records, start_iter, self.settings.seed)

    def build_test_loader(self, dataset_name: str) -> Iterable:
        node = copy.deepcopy(self.cfg.dataloader.test)
        node.dataset.names = dataset_name
        return instantiate(node)

    def build_evaluator(self, dataset_name: str, tta: bool = False):
        if "evaluator" not in self.cfg.dataloader:
            return None
        node = copy.deepcopy(self.cfg.dataloader.evaluator)
        if "dataset_name" in node:
            node.dataset_name = dataset_name
        if tta and "output_dir" in node:
            node.output_dir = os.path.join(self.settings.output_dir, "inference_TTA")
        return instantiate(node)

    def build_validation_loader(self) -> Iterable:
        return instantiate_validation_loader(self.cfg)

    def test_resize(self) -> T.Augmentation:
        augmentations = instantiate(self.cfg.dataloader.test.mapper.augmentations)
        if len(augmentations) != 1:
            raise ValueError(f"dataloader.test.mapper.augmentations holds {len(augmentations)} augmentations; "
                             "prediction takes exactly one, the test resize")
        return augmentations[0]

    @property
    def input_format(self) -> str:
        return self.cfg.model.input_format

    def save_config(self, path: str) -> None:
        with atomic_path(path) as tmp:
            LazyConfig.save(self.cfg, tmp)
            if os.path.exists(tmp + ".pkl"):  # LazyConfig.save adds a cloudpickle of what YAML cannot hold
                with atomic_path(path + ".pkl") as pkl:
                    os.replace(tmp + ".pkl", pkl)
