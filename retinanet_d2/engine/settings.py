"""``RunSettings``: the values a run reads from its config, filled by the config kind's adapter
(yacs_parts.py, lazy_parts.py) so that nothing past the adapters asks which kind of config it has."""
import dataclasses
from typing import Dict, Tuple

import torch


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What the training loop, evaluation and prediction read from a config, whichever its kind.
    Each ``*_key`` names the config key a value came from, for error messages."""

    output_dir: str
    output_dir_key: str
    weights: str
    weights_key: str
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
    tta: Dict  # enabled, min_sizes, max_size, flip (modeling/tta.py)
    tiles: Dict  # size (0: whole images), overlap, batch_size (modeling/sliced.py)
    precise_bn: Dict  # enabled, num_iter (detectron2's PreciseBN hook, where the model has BatchNorm)
    train_datasets: Tuple[str, ...]
    test_datasets: Tuple[str, ...]
    num_classes: int
    num_classes_key: str
    seed: int  # < 0: a random seed
    cudnn_benchmark: bool
    ddp: Dict
