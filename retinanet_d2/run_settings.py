"""What the training engine (engine.py) reads from a config, whichever its kind: a yacs CfgNode with
this project's node, or a LazyConfig whose ``train`` node is detectron2's ``common/train.py`` plus this
project's optional ``amp.dtype``, ``amp.test``, ``best_checkpointer`` (val_metric, mode) and
``validation_loss_period``; absent keys take MODEL.FOCAL_RETINANET's defaults."""
import dataclasses
from typing import Dict, Tuple

import torch

from .amp import resolve_amp_dtype
from .config import DEFAULTS, is_lazy, retinanet_node


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What the engine reads from a config, whichever its kind."""

    output_dir: str
    weights: str
    weights_key: str  # where ``weights`` came from, for errors
    max_iter: int
    checkpointer: Dict  # PeriodicCheckpointer's period (and max_to_keep)
    eval_period: int
    log_period: int
    train_amp: bool
    test_amp: bool
    device: str  # "cpu" or "cuda"
    amp_dtype: torch.dtype
    best: Dict  # ResumableBestCheckpointer's val_metric and mode ("" val_metric: none)
    validation_loss_period: int
    train_datasets: Tuple[str, ...]
    num_classes: int
    num_classes_key: str
    seed: int  # < 0: a random seed
    ddp: Dict

    @classmethod
    def of(cls, cfg) -> "RunSettings":
        return _lazy_settings(cfg) if is_lazy(cfg) else _yacs_settings(cfg)


def _yacs_settings(cfg) -> RunSettings:
    node = retinanet_node(cfg)
    device = torch.device(cfg.MODEL.DEVICE).type
    return RunSettings(
        output_dir=cfg.OUTPUT_DIR, weights=cfg.MODEL.WEIGHTS, weights_key="MODEL.WEIGHTS",
        max_iter=cfg.SOLVER.MAX_ITER, checkpointer={"period": cfg.SOLVER.CHECKPOINT_PERIOD},
        eval_period=cfg.TEST.EVAL_PERIOD, log_period=20,  # DefaultTrainer's writers' period
        train_amp=cfg.SOLVER.AMP.ENABLED, test_amp=node.TEST_AMP, device=device,
        amp_dtype=resolve_amp_dtype(node.AMP_DTYPE, device),
        best={"val_metric": node.BEST_METRIC, "mode": node.BEST_MODE},
        validation_loss_period=node.VALIDATION_LOSS_PERIOD, train_datasets=tuple(cfg.DATASETS.TRAIN),
        num_classes=cfg.MODEL.RETINANET.NUM_CLASSES, num_classes_key="MODEL.RETINANET.NUM_CLASSES",
        seed=cfg.SEED, ddp={"broadcast_buffers": False},
    )


def _lazy_settings(cfg) -> RunSettings:
    train, node = cfg.train, DEFAULTS.MODEL.FOCAL_RETINANET
    amp = train.get("amp", {})
    device = torch.device(train.device).type
    names = cfg.dataloader.train.dataset.names if "train" in cfg.dataloader else ()
    return RunSettings(
        output_dir=train.output_dir, weights=train.init_checkpoint, weights_key="train.init_checkpoint",
        max_iter=train.max_iter, checkpointer=dict(train.checkpointer), eval_period=train.eval_period,
        log_period=train.log_period, train_amp=bool(amp.get("enabled", False)), test_amp=bool(amp.get("test", False)),
        device=device, amp_dtype=resolve_amp_dtype(amp.get("dtype", ""), device, key="train.amp.dtype"),
        best={"val_metric": node.BEST_METRIC, "mode": node.BEST_MODE, **train.get("best_checkpointer", {})},
        validation_loss_period=train.get("validation_loss_period", node.VALIDATION_LOSS_PERIOD),
        train_datasets=(names,) if isinstance(names, str) else tuple(names),
        num_classes=cfg.model.num_classes, num_classes_key="model.num_classes",
        seed=train.get("seed", -1), ddp=dict(train.get("ddp", {})),
    )
