"""The config's learning rates win over a resumed checkpoint's.

detectron2 restores the optimizer's param groups (``lr``, ``initial_lr``) and the LR scheduler's
``base_lrs`` from the checkpoint, so a run resumed with a lower ``SOLVER.BASE_LR`` / ``optimizer.lr``
(the usual answer to a divergence) would silently train at the old rate. The schedule's shape
(steps, gamma, warmup, max_iter) comes from the config already: the scheduler object is rebuilt
from it and only ``base_lrs`` / ``last_epoch`` are checkpointed.
"""
import logging
from typing import List

logger = logging.getLogger(__name__)


def config_learning_rates(optimizer) -> List[float]:
    """The base learning rate of each param group as the config built it (before any resume):
    ``initial_lr`` where a scheduler has set it, else ``lr``."""
    return [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]


def restore_config_learning_rates(optimizer, config_lrs: List[float], scheduler=None, iteration: int = 0) -> bool:
    """After loading a checkpoint: give each param group its config base rate ``config_lrs`` again
    where the checkpoint's differs, and (with an LR ``scheduler`` already built, as detectron2's
    DefaultTrainer has) the scheduler's base rates and the current rates of its schedule. Logs each
    change, naming ``iteration`` (the first one trained after the resume). Returns whether any changed.
    """
    loaded = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    if loaded == list(config_lrs):
        return False
    changed = sorted({(old, new) for old, new in zip(loaded, config_lrs) if old != new})
    logger.warning(
        "The config's learning rate differs from the checkpoint's: "
        + ", ".join(f"{old:g} -> {new:g}" for old, new in changed)
        + f"; the config's schedule applies from iteration {iteration} on"
    )
    for group, lr in zip(optimizer.param_groups, config_lrs):
        group["initial_lr"] = lr
        group["lr"] = lr
    if scheduler is not None:
        scheduler.base_lrs = list(config_lrs)
        for group, lr in zip(optimizer.param_groups, scheduler.get_lr()):  # detectron2 LRMultiplier
            group["lr"] = lr
    return True
