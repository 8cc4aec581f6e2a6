"""Training and evaluating from detectron2's new-style configs (LazyConfig ``.py`` files with
``model`` / ``dataloader`` / ``optimizer`` / ``lr_multiplier`` / ``train``), which train_net.py runs
for a ``.py`` config file.

The ``train`` node is detectron2's ``common/train.py`` (output_dir, init_checkpoint, max_iter,
amp.enabled, ddp, checkpointer, eval_period, log_period, device); this project reads two more optional
keys: ``train.amp.dtype`` ("float16", "bfloat16" or "" for the device's default) and
``train.amp.test`` (evaluate under autocast too). Weights load through RetinaNetCheckpointer (every
format, never running code from the file); training uses detectron2's SimpleTrainer, or
MixedPrecisionTrainer under AMP (CPU too). Resuming restores the model, optimizer, scheduler and
iteration; the data loader starts a new pass (the yacs path, train_net.Trainer, also resumes it).
"""
import logging

import torch

from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from .amp import MixedPrecisionTrainer, autocast_if, resolve_amp_dtype
from .checkpoint import RetinaNetCheckpointer
from .checkpoint.best import ResumableBestCheckpointer
from .compat import create_ddp_model
from .config import DEFAULTS
from .data import check_dataset_files, check_num_classes
from .run_setup import require_weights, save_config
from .schedule import config_learning_rates, restore_config_learning_rates

logger = logging.getLogger("detectron2")


def _amp_settings(cfg):
    """(train under AMP, test under AMP, device type, dtype) from cfg.train."""
    amp = cfg.train.get("amp", {})
    device = torch.device(cfg.train.device).type
    dtype = resolve_amp_dtype(amp.get("dtype", ""), device, key="train.amp.dtype")
    return bool(amp.get("enabled", False)), bool(amp.get("test", False)), device, dtype


def build_lazy_model(cfg):
    """cfg.model instantiated on cfg.train.device."""
    model = instantiate(cfg.model)
    return model.to(cfg.train.device)


def lazy_test(cfg, model):
    """Evaluate ``model`` on cfg.dataloader.test with cfg.dataloader.evaluator; the results dict
    (empty if the config has no evaluator)."""
    if "evaluator" not in cfg.dataloader:
        return {}
    _, test_amp, device, dtype = _amp_settings(cfg)
    with autocast_if(test_amp, device, dtype):
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def lazy_eval_only(cfg, resume: bool, allow_random_weights: bool = False):
    """--eval-only: the newest checkpoint of train.output_dir with ``resume``, else
    train.init_checkpoint; refused without weights, or with weights that leave layers uninitialised,
    unless ``allow_random_weights``."""
    model = build_lazy_model(cfg)
    checkpointer = RetinaNetCheckpointer(
        model, save_dir=cfg.train.output_dir, weights_key="train.init_checkpoint", require_complete=not allow_random_weights
    )
    require_weights(checkpointer, cfg.train.init_checkpoint, "train.init_checkpoint", resume=resume,
                    allow_random_weights=allow_random_weights)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    return lazy_test(cfg, create_ddp_model(model))


def _best_checkpointer(cfg, checkpointer):
    """model_best.pth by train.best_checkpointer (val_metric, mode; defaults: MODEL.FOCAL_RETINANET's
    BEST_METRIC and BEST_MODE) when train.eval_period > 0 and val_metric is not ""; else None."""
    node = DEFAULTS.MODEL.FOCAL_RETINANET
    best = {"val_metric": node.BEST_METRIC, "mode": node.BEST_MODE, **cfg.train.get("best_checkpointer", {})}
    if cfg.train.eval_period > 0 and best["val_metric"]:
        return ResumableBestCheckpointer(cfg.train.eval_period, checkpointer, **best)
    return None


def lazy_train(cfg, resume: bool):
    """Train as cfg says, from the last checkpoint of train.output_dir with ``resume``."""
    train_amp, _, device, dtype = _amp_settings(cfg)
    model = build_lazy_model(cfg)
    logger.info(f"Model:\n{model}")
    names = cfg.dataloader.train.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        check_dataset_files(name)
    loader = instantiate(cfg.dataloader.train)
    for name in names:  # the classes are known once the dataset is loaded
        check_num_classes(name, cfg.model.num_classes, key="model.num_classes")
    save_config(cfg)  # before the model object joins the optimizer's node (not part of the config)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    config_lrs = config_learning_rates(optimizer)
    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    if train_amp:
        trainer = MixedPrecisionTrainer(model, loader, optimizer, device_type=device, dtype=dtype)
    else:
        trainer = SimpleTrainer(model, loader, optimizer)
    checkpointer = RetinaNetCheckpointer(model, cfg.train.output_dir, weights_key="train.init_checkpoint", trainer=trainer)
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main_process else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: lazy_test(cfg, model)),
            _best_checkpointer(cfg, checkpointer) if main_process else None,
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if main_process
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint holds the iteration it finished; training goes on from the next one.
    start_iter = trainer.iter + 1 if checkpointer.resumed_from else 0
    if start_iter:  # the LR scheduler hook builds its schedule from these rates before training
        restore_config_learning_rates(optimizer, config_lrs, iteration=start_iter)
    trainer.train(start_iter, cfg.train.max_iter)
