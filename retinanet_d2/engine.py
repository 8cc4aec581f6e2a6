"""One training engine for both kinds of detectron2 config: yacs (``.yaml``, this project's node) and
LazyConfig (``.py`` files with ``model`` / ``dataloader`` / ``optimizer`` / ``lr_multiplier`` /
``train``). ``Trainer`` is detectron2's DefaultTrainer with, for either kind:

- the step trainer built once: SimpleTrainer, or MixedPrecisionTrainer under AMP (CPU too; amp.py);
- the dataset checks (files, boxes, class count) in one place, before training starts;
- one train loader, built at the first iteration from the iteration training starts at, so that a
  resumed run continues the checkpointed run's image stream (data/resumable.py);
- the optimizer and AMP scaler in the checkpoint (detectron2 0.6 does not save them), weights in any
  format through RetinaNetCheckpointer, the config's learning rate applied on resume (schedule.py);
- the same hooks: detectron2's (timer, LR schedule, checkpoints, evaluation, writers), the
  validation loss, and ``model_best.pth`` by a metric.

What it reads from a config is ``RunSettings`` (run_settings.py).
"""
import copy
import logging
import os
import weakref
from typing import Callable, Iterable

from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm

from .amp import MixedPrecisionTrainer, autocast_if, warn_if_emulated
from .checkpoint import RetinaNetCheckpointer
from .checkpoint.best import ResumableBestCheckpointer
from .compat import create_ddp_model
from .config import is_lazy
from .data import check_dataset_files, check_num_classes
from .data.mapper import FileNamingDatasetMapper
from .data.resumable import build_resumable_train_loader, instantiate_resumable_train_loader, training_records
from .evaluation import build_coco_evaluator
from .modeling.tta import FocalRetinaNetWithTTA
from .run_setup import require_weights
from .run_settings import RunSettings
from .schedule import config_learning_rates, restore_config_learning_rates
from .validation_loss import ValidationLoss, build_validation_loader, instantiate_validation_loader

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


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer for yacs and LazyConfig configs alike (see the module's docstring)."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not is_lazy(cfg):
            cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg, self.run = cfg, RunSettings.of(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        records = self.checked_training_records(cfg)
        self.train_loader = LoaderFromStart(lambda start: self.train_loader_from(cfg, records, start))
        model = create_ddp_model(model, **self.run.ddp)
        if self.run.train_amp or self.run.test_amp:
            warn_if_emulated(self.run.device, self.run.amp_dtype)
        if self.run.train_amp:
            self._trainer = MixedPrecisionTrainer(model, self.train_loader, optimizer,
                                                  device_type=self.run.device, dtype=self.run.amp_dtype)
        else:
            self._trainer = SimpleTrainer(model, self.train_loader, optimizer)
        if hasattr(self, "after_backward"):  # detectron2 >= 0.6's hook stage: the step trainer runs our hooks'
            self._trainer.after_backward = self.after_backward
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.config_lrs = config_learning_rates(optimizer)
        self.checkpointer = RetinaNetCheckpointer(model, self.run.output_dir, weights_key=self.run.weights_key,
                                                  trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = self.run.max_iter
        self.register_hooks(self.build_hooks())

    # Building, by config kind -------------------------------------------------------------------

    @classmethod
    def build_model(cls, cfg):
        if not is_lazy(cfg):
            return super().build_model(cfg)
        model = instantiate(cfg.model).to(cfg.train.device)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        if not is_lazy(cfg):
            return super().build_optimizer(cfg, model)
        node = copy.deepcopy(cfg.optimizer)  # the model object does not join the config
        node.params.model = model
        return instantiate(node)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if not is_lazy(cfg):
            return super().build_lr_scheduler(cfg, optimizer)
        return LRMultiplier(optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=cfg.train.max_iter)

    @classmethod
    def checked_training_records(cls, cfg):
        """The training datasets' records, their files checked (data/checks.py) and their class count
        compared with the model's; raises naming the file, record or key."""
        run = RunSettings.of(cfg)
        for name in run.train_datasets:
            check_dataset_files(name)
        records = training_records(cfg)
        for name in run.train_datasets:  # a COCO json's classes are known once it is loaded
            check_num_classes(name, run.num_classes, key=run.num_classes_key)
        return records

    @classmethod
    def train_loader_from(cls, cfg, records, start_iter: int):
        """The train loader over ``records``, its stream continued at ``start_iter``."""
        if is_lazy(cfg):
            return instantiate_resumable_train_loader(cfg.dataloader.train, records, start_iter, RunSettings.of(cfg).seed)
        return build_resumable_train_loader(cfg, records, start_iter)

    @classmethod
    def build_train_loader(cls, cfg):
        """The checked train loader from iteration 0 (DefaultTrainer's API; PreciseBN's loader)."""
        return cls.train_loader_from(cfg, cls.checked_training_records(cfg), 0)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        loader = build_detection_test_loader(cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, is_train=False))
        check_num_classes(dataset_name, cfg.MODEL.RETINANET.NUM_CLASSES)
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCOEvaluator scoring TEST.DETECTIONS_PER_IMAGE detections, then the error analysis (evaluation.py)."""
        return build_coco_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    def build_hooks(self):
        """detectron2's hooks (DefaultTrainer's for yacs; the same kinds from ``train`` for LazyConfig),
        plus the validation loss every ``validation_loss_period`` iterations (before the writers) and
        model_best.pth by the best metric when evaluating periodically (after the evaluation hook,
        which stores the metric)."""
        run, main_process = self.run, comm.is_main_process()
        if is_lazy(self.cfg):
            hook_list = [
                hooks.IterationTimer(),
                hooks.LRScheduler(),
                hooks.PeriodicCheckpointer(self.checkpointer, **run.checkpointer) if main_process else None,
                hooks.EvalHook(run.eval_period, lambda: self.test(self.cfg, self.model)),
                hooks.PeriodicWriter(default_writers(run.output_dir, run.max_iter), period=run.log_period)
                if main_process else None,
            ]
        else:
            hook_list = super().build_hooks()
        if run.validation_loss_period > 0:
            loader = instantiate_validation_loader(self.cfg) if is_lazy(self.cfg) else build_validation_loader(self.cfg)
            writers = [i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicWriter)]
            hook_list.insert(writers[0] if writers else len(hook_list), ValidationLoss(run.validation_loss_period, loader))
        if run.eval_period > 0 and run.best["val_metric"] and main_process:
            hook_list.append(ResumableBestCheckpointer(run.eval_period, self.checkpointer, **run.best))
        return hook_list

    def train(self):
        if is_lazy(self.cfg):  # DefaultTrainer.train then checks yacs' TEST.EXPECTED_RESULTS
            return TrainerBase.train(self, self.start_iter, self.max_iter)
        return super().train()

    # Evaluation ---------------------------------------------------------------------------------

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate ``model`` (under autocast with the test AMP setting). yacs: DefaultTrainer.test, and
        with TEST.AUG.ENABLED also the test-time augmented model (modeling/tta.py; results in
        OUTPUT_DIR/inference_TTA, under "<task>_TTA" as detectron2's R-CNN TTA reports them).
        LazyConfig: cfg.dataloader.test with cfg.dataloader.evaluator ({} without an evaluator)."""
        run = RunSettings.of(cfg)
        with autocast_if(run.test_amp, run.device, run.amp_dtype):
            if is_lazy(cfg):
                return cls._lazy_test(cfg, model)
            results = super().test(cfg, model, evaluators)
            if cfg.TEST.AUG.ENABLED and evaluators is None:
                tta_evaluators = [cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
                                  for name in cfg.DATASETS.TEST]
                tta_results = super().test(cfg, FocalRetinaNetWithTTA(cfg, model), tta_evaluators)
                results.update({f"{task}_TTA": metrics for task, metrics in tta_results.items()})
        return results

    @staticmethod
    def _lazy_test(cfg, model):
        if "evaluator" not in cfg.dataloader:
            return {}
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        if comm.is_main_process():
            print_csv_format(results)
        return results

    # Checkpoints --------------------------------------------------------------------------------

    def state_dict(self):
        """The iteration, the hooks' state and the step trainer's (optimizer, AMP scaler) on every
        detectron2 (0.6's DefaultTrainer leaves the last out)."""
        return {**TrainerBase.state_dict(self), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state):
        if "_trainer" not in state:
            raise ValueError(
                f"the resume checkpoint of {self.run.output_dir} holds no optimizer state ('_trainer'): it was "
                f"written by another trainer. Load it as weights instead ({self.run.weights_key}=<that file>, "
                "without --resume, into a new output folder)"
            )
        TrainerBase.load_state_dict(self, state)
        self._trainer.load_state_dict(state["_trainer"])

    def resume_or_load(self, resume=True):
        """The newest readable checkpoint of the output folder with ``resume`` (model, optimizer,
        scheduler, iteration, then the data stream from there and the config's learning rate), else
        the config's weights."""
        self.checkpointer.resume_or_load(self.run.weights, resume=resume)
        if self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1  # a checkpoint holds the iteration it finished
            restore_config_learning_rates(self.optimizer, self.config_lrs, self.scheduler, self.start_iter)
        self.train_loader.start_iter = self.start_iter


def evaluate(cfg, *, resume: bool, allow_random_weights: bool = False):
    """--eval-only: the newest checkpoint of the output folder with ``resume``, else the config's
    weights, evaluated by Trainer.test. Refused without weights, or with weights that leave layers
    uninitialised, unless ``allow_random_weights``."""
    run = RunSettings.of(cfg)
    model = Trainer.build_model(cfg)
    checkpointer = RetinaNetCheckpointer(model, save_dir=run.output_dir, weights_key=run.weights_key,
                                         require_complete=not allow_random_weights)
    require_weights(checkpointer, run.weights, run.weights_key, resume=resume, allow_random_weights=allow_random_weights)
    checkpointer.resume_or_load(run.weights, resume=resume)
    if run.test_amp:
        warn_if_emulated(run.device, run.amp_dtype)
    return Trainer.test(cfg, model)
