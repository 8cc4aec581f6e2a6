"""Training and evaluation as short functions over a run's parts (parts.RunParts), in the shape of
detectron2's ``tools/lazyconfig_train_net.py``: build the parts, a step trainer (step.py), the hooks,
resume, train. detectron2's hooks do the timing, LR schedule, PreciseBN, checkpoints, evaluation and
writing; this project's add the validation loss (validation_loss.py) and ``model_best.pth`` by a
metric (checkpoint/best.py). Beyond detectron2's loop:

- one train loader, built at the first iteration from the iteration training starts at, so that a
  resumed run continues the checkpointed run's image stream (data/resumable.py);
- the dataset checks (files, boxes, class count) before training starts;
- weights in any format and a resume that survives a damaged newest checkpoint (RetinaNetCheckpointer);
- the config's learning rate applied on resume (schedule.py);
- evaluation under the test AMP setting, and test-time augmentation (modeling/tta.py) for either
  kind of config.
"""
import logging
from collections import OrderedDict
from typing import Callable, Dict, Iterable

from fvcore.nn.precise_bn import get_bn_modules
from torch import nn

from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..amp import autocast_if, warn_if_emulated
from ..checkpoint import RetinaNetCheckpointer
from ..checkpoint.best import ResumableBestCheckpointer
from ..compat import create_ddp_model
from ..data import check_dataset_files
from ..modeling.tta import FocalRetinaNetWithTTA
from ..schedule import config_learning_rates, restore_config_learning_rates
from ..validation_loss import ValidationLoss
from .parts import RunParts
from .run_setup import require_weights, save_config
from .step import TrainerCheckpoint, build_step_trainer

logger = logging.getLogger("detectron2")


class LoaderFromStart:
    """The batches of a train loader built when the first batch is taken, from the iteration that
    training starts at (known once a checkpoint is loaded): one loader, its workers started once."""

    def __init__(self, build: Callable[[int], Iterable]):
        """build: start iteration -> the loader."""
        self._build = build
        self.start_iter = 0

    def __iter__(self):
        yield from self._build(self.start_iter)


def test(parts: RunParts, model: nn.Module) -> Dict:
    """Evaluate ``model`` on each test dataset with its evaluator (datasets without one are skipped)
    under autocast with the test AMP setting, on tiles when sliced inference is on; with test-time
    augmentation on, the augmented (whole-image) model too, its metrics under "<task>_TTA" (as
    detectron2's R-CNN TTA reports them). Results by dataset, or one dataset's results alone, as
    DefaultTrainer.test returns them."""
    settings, results = parts.settings, OrderedDict()
    with autocast_if(settings.test_amp, settings.device, settings.amp_dtype):
        for name in settings.test_datasets:
            loader = parts.checked_test_loader(name)  # loads the dataset, which its evaluator reads
            evaluator = parts.build_evaluator(name)
            if evaluator is None:
                logger.warning(f"no evaluator for {name}: not evaluated")
                continue
            results[name] = inference_on_dataset(parts.inference_model(model), loader, evaluator)
            if settings.tta["enabled"]:
                tta = {key: settings.tta[key] for key in ("min_sizes", "max_size", "flip")}
                augmented = inference_on_dataset(FocalRetinaNetWithTTA(model, **tta), loader, parts.build_evaluator(name, tta=True))
                results[name].update({f"{task}_TTA": metrics for task, metrics in augmented.items()})
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(results[name])
    return list(results.values())[0] if len(results) == 1 else results


def train(parts: RunParts, model: nn.Module, *, resume: bool) -> Dict:
    """Train ``model`` (built by ``parts``) as the config says: with ``resume``, from the newest readable
    checkpoint of the output folder (model, optimizer, scheduler, iteration, hooks' state, data stream),
    else from the config's weights. Returns the last evaluation's results ({} without one)."""
    settings = parts.settings
    logger.info(f"Model:\n{model}")
    optimizer = parts.build_optimizer(model)
    records = parts.checked_training_records()
    for name in settings.test_datasets:  # a bad test set fails now, not after hours of training
        check_dataset_files(name)
    loader = LoaderFromStart(lambda start: parts.build_train_loader(records, start))
    if settings.train_amp or settings.test_amp:
        warn_if_emulated(settings.device, settings.amp_dtype)
    step = build_step_trainer(create_ddp_model(model, **settings.ddp), loader, optimizer, settings)
    scheduler = parts.build_lr_scheduler(optimizer)
    config_lrs = config_learning_rates(optimizer)
    checkpointer = RetinaNetCheckpointer(model, settings.output_dir, weights_key=settings.weights_key,
                                         trainer=TrainerCheckpoint(step, settings))
    last_results = {}

    def evaluate_and_keep():
        last_results.clear()
        last_results.update(test(parts, model))
        return last_results

    step.register_hooks(_hooks(parts, model, optimizer, scheduler, checkpointer, evaluate_and_keep, records))
    checkpointer.resume_or_load(settings.weights, resume=resume)
    start_iter = step.iter + 1 if checkpointer.resumed_from else 0  # a checkpoint holds the iteration it finished
    if checkpointer.resumed_from:
        restore_config_learning_rates(optimizer, config_lrs, scheduler, start_iter)
    loader.start_iter = start_iter
    save_config(parts)
    step.train(start_iter, settings.max_iter)
    return dict(last_results)


def _hooks(parts: RunParts, model, optimizer, scheduler, checkpointer, evaluate: Callable, records):
    """DefaultTrainer's hooks in its order (timer, LR schedule, PreciseBN where the model has
    BatchNorm, checkpoints, evaluation, writers), the validation loss before the writers and
    model_best.pth after the evaluation (which stores the metric)."""
    settings, main_process = parts.settings, comm.is_main_process()
    precise_bn = settings.precise_bn["enabled"] and bool(get_bn_modules(model))
    return [
        hooks.IterationTimer(),
        hooks.LRScheduler(optimizer=optimizer, scheduler=scheduler),
        hooks.PreciseBN(settings.eval_period, model, parts.build_train_loader(records, 0), settings.precise_bn["num_iter"])
        if precise_bn else None,
        hooks.PeriodicCheckpointer(checkpointer, **settings.checkpointer) if main_process else None,
        hooks.EvalHook(settings.eval_period, evaluate),
        ValidationLoss(settings.validation_loss_period, parts.build_validation_loader())
        if settings.validation_loss_period > 0 else None,
        hooks.PeriodicWriter(default_writers(settings.output_dir, settings.max_iter), period=settings.log_period)
        if main_process else None,
        ResumableBestCheckpointer(settings.eval_period, checkpointer, **settings.best)
        if settings.eval_period > 0 and settings.best["val_metric"] and main_process else None,
    ]


def evaluate(parts: RunParts, model: nn.Module, *, resume: bool, allow_random_weights: bool = False) -> Dict:
    """--eval-only: the newest checkpoint of the output folder with ``resume``, else the config's
    weights, loaded into ``model`` and evaluated by ``test``. Refused without weights, or with weights
    that leave layers uninitialised, unless ``allow_random_weights``."""
    settings = parts.settings
    checkpointer = RetinaNetCheckpointer(model, save_dir=settings.output_dir, weights_key=settings.weights_key,
                                         require_complete=not allow_random_weights)
    require_weights(checkpointer, settings.weights, settings.weights_key, resume=resume,
                    allow_random_weights=allow_random_weights)
    checkpointer.resume_or_load(settings.weights, resume=resume)
    if settings.test_amp:
        warn_if_emulated(settings.device, settings.amp_dtype)
    return test(parts, model)
